"""Hostile and malformed client input over raw sockets: clear 4xx answers, nothing ambiguous forwarded."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from tests.support.inproc import RawClient, raw, sleep, status_of

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

MALFORMED = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "obsolete line folding", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", "bare CR", id="bare-CR"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "NUL", id="NUL"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "malformed",
        id="CL-and-TE",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "malformed",
        id="two-CL",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "malformed",
        id="bad-chunk-size",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", "malformed", id="unknown-TE"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "malformed", id="space-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "more than one Host", id="two-Host"),
    pytest.param(
        b"GET / HTTP/1.1\r\nhost: x\r\nX: 1\r\nHOST: x\r\n\r\n", "more than one Host", id="same-Host-twice"
    ),
    pytest.param(b"NOT A REQUEST\r\n\r\n", "malformed", id="garbage"),
]


@pytest.mark.parametrize("request_bytes, reason", MALFORMED)
@pytest_twisted.ensureDeferred
async def test_malformed_requests_get_400_and_are_never_forwarded(
    make_backends, start_powerlb, request_bytes, reason
):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    response = await raw(lb.port, request_bytes)
    assert status_of(response) == 400, response
    assert reason.encode() in response
    assert b"connection: close" in response.lower()
    assert a.served() == 0
    assert status_of(await raw(lb.port, GET)) == 200  # powerlb still serves the next client


@pytest_twisted.ensureDeferred
async def test_limits_give_414_431_and_413(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], max_url_length="1KiB", max_header_size="2KiB", max_headers=20, max_body="1KiB")
    long_url = b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(await raw(lb.port, long_url)) == 414
    big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 3000 + b"\r\n\r\n"
    assert status_of(await raw(lb.port, big_header)) == 431
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n"
    assert status_of(await raw(lb.port, many)) == 431
    declared = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    assert status_of(await raw(lb.port, declared)) == 413
    chunk = b"400\r\n" + b"c" * 1024 + b"\r\n"
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n"
    assert status_of(await raw(lb.port, chunked)) == 413
    assert a.served() == 0
    within = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000
    assert status_of(await raw(lb.port, within)) == 200
    assert a.requests[-1].body == b"b" * 1000


@pytest_twisted.ensureDeferred
async def test_slowloris_is_cut_with_408_and_others_are_served(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], client_timeout=0.5)
    dribble = [bytes([byte]) for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n"]
    slow = defer.ensureDeferred(raw(lb.port, *dribble, pause=0.05, timeout=3.0))
    for _ in range(5):
        response = await http.get(lb.url + "/")
        assert response.code == 200
        await response.content()
    answer = await slow
    assert status_of(answer) == 408
    assert b"request headers not received in time" in answer


@pytest_twisted.ensureDeferred
async def test_huge_chunk_size_gets_413_at_once_and_nothing_is_served(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], max_body="1MiB")
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    # 2^96 in hex: no body limit can hold it; the client then sends a little and waits.
    answer = await raw(lb.port, head + b"1" + b"0" * 24 + b"\r\nabc", timeout=3.0)
    assert status_of(answer) == 413, answer
    assert b"request body larger than the limit" in answer
    # Sizes that each fit but add up past the limit are cut at the chunk that crosses it.
    chunks = b"80000\r\n" + b"c" * 0x80000 + b"\r\n80001\r\n"
    assert status_of(await raw(lb.port, head + chunks, timeout=3.0)) == 413
    assert a.served() == 0


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /" + b"a" * 40, id="request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40, id="header-line"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_head_trickled_steadily_gets_408_from_its_first_byte(make_backends, start_powerlb, http, head):
    """Every byte comes well within the idle time, but the head as a whole takes longer than allowed."""
    (a,) = make_backends(1)
    lb = start_powerlb([a], client_timeout=1)
    pieces = [bytes([byte]) for byte in head]  # never complete: only the time limit can answer
    trickles = [defer.ensureDeferred(raw(lb.port, *pieces, pause=0.1, timeout=10.0)) for _ in range(3)]
    response = await http.get(lb.url + "/")
    assert response.code == 200
    await response.content()
    for trickle in trickles:
        answer = await trickle
        assert status_of(answer) == 408, answer
        assert b"request headers not received in time" in answer
    assert a.served() == 1


@pytest_twisted.ensureDeferred
async def test_slow_body_is_cut_with_408(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], client_timeout=0.5)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    answer = await raw(lb.port, head, *([b"b"] * 100), pause=0.05, timeout=4.0)
    assert status_of(answer) == 408
    assert b"request body arriving too slowly" in answer
    assert a.served() == 0  # the backend never got a complete request


@pytest_twisted.ensureDeferred
async def test_silent_client_connection_is_closed_after_client_timeout(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], client_timeout=0.3)
    answer = await raw(lb.port, b"GET / HTT", timeout=3.0)
    assert b"200" not in answer


@pytest_twisted.ensureDeferred
async def test_connections_beyond_the_limit_get_503(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], max_connections=3)
    idle = [RawClient([], 0) for _ in range(3)]
    for client in idle:
        await protocol.ClientCreator(reactor, lambda c=client: c).connectTCP("127.0.0.1", lb.port)
    while len(lb.service.proxy_listener.factory.channels) < 3:
        await sleep(0.01)
    refused = await raw(lb.port, GET)
    assert status_of(refused) == 503
    assert b"too many connections" in refused
    idle[0].transport.loseConnection()
    await idle[0].closed
    while len(lb.service.proxy_listener.factory.channels) > 2:
        await sleep(0.01)
    assert status_of(await raw(lb.port, GET)) == 200
    for client in idle[1:]:
        client.transport.loseConnection()
        await client.closed


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random mutation of ``data``: a flipped, inserted, deleted or duplicated piece."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = rng.choice([b"\r", b"\n", b"\x00", b" ", b":", b"\r\n", b"\t", b"0\r\n"])
        elif kind == 2:
            del data[at : at + rng.randint(1, 8)]
        elif kind == 3:
            data[at:at] = data[max(0, at - 20) : at]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 10)))
    return bytes(data)


SEEDS = [
    GET,
    b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
]


@pytest_twisted.ensureDeferred
async def test_fuzzed_requests_never_break_powerlb(make_backends, start_powerlb):
    """Mutated requests (seeded, bounded): powerlb answers with an HTTP response or closes,
    never forwards a request it rejected, and keeps serving."""
    (a,) = make_backends(1)
    lb = start_powerlb([a], client_timeout=0.3)
    rng = random.Random(20261124)
    for i in range(80):
        junk = mutate(rng, rng.choice(SEEDS))
        response = await raw(lb.port, junk, timeout=2.0)
        if response:
            assert response.startswith(b"HTTP/1.1 "), (i, junk, response)
            assert status_of(response) in (200, 400, 408, 413, 414, 431, 501, 502), (i, junk, response)
    assert status_of(await raw(lb.port, GET)) == 200
