"""Interim (1xx) responses from a backend: relayed to HTTP/1.1 clients ahead of the response, and only then.

Over raw sockets to a real powerlb with a real backend that writes ``100``,
``102`` and ``103 Early Hints`` before its final response.
"""

from __future__ import annotations

import pytest_twisted

from tests.support.inproc import raw, status_of
from tests.support.interim import RELAYED, hinting, request


@pytest_twisted.ensureDeferred
async def test_interim_responses_reach_http11_clients_ahead_of_the_response(make_backends, start_powerlb):
    (a,) = make_backends(1)
    a.routes[b"/stored"] = hinting(b"max-age=60")
    a.routes[b"/passed"] = hinting(b"no-store")
    lb = start_powerlb([a])
    for method, path in [(b"GET", b"/stored"), (b"GET", b"/passed"), (b"POST", b"/passed")]:
        answer = await raw(lb.port, request(method, path))
        assert answer.startswith(RELAYED + b"HTTP/1.1 200 OK\r\n"), (method, path, answer)
        assert answer.endswith(b"\r\n\r\nfinal body")
        assert answer.lower().count(b"\r\nx-cache:") == 1
    # Never stored: the hit is the final response alone.
    hit = await raw(lb.port, request(b"GET", b"/stored"))
    assert status_of(hit) == 200 and b"x-cache: hit" in hit.lower() and b"103" not in hit
    assert a.served() == 3
    # Never counted as the response: three 2xx from the backend, nothing else.
    counts = lb.service.outcomes.counts
    assert {status_class for (_, status_class, _) in counts} == {2}
    assert sum(counts.values()) == 4


@pytest_twisted.ensureDeferred
async def test_http10_clients_never_get_interim_responses(make_backends, start_powerlb):
    (a,) = make_backends(1)
    a.routes[b"/passed"] = hinting(b"no-store")
    lb = start_powerlb([a])
    answer = await raw(lb.port, request(b"GET", b"/passed", b"HTTP/1.0"))
    assert status_of(answer) == 200, answer
    assert b" 10" not in answer.split(b"\r\n", 1)[0] and b"103" not in answer and b"link:" not in answer
    assert answer.endswith(b"\r\n\r\nfinal body")
