"""powerlb.http11.ResponseParser against h11: the same bytes give the same framing and verdict.

Responses are built from parts (status line, headers, a body framed by Content-Length,
chunked or the end of the connection, interim 1xx responses), then optionally damaged
(cut short, a byte dropped or replaced). Both parsers read the response to a GET or a
HEAD, then the end of the connection; they must agree on accepting it and, when they do,
on the status, the headers, the body and whether the connection may be reused.

Where RFC 9112 leaves a choice and the two choose differently, the inputs stay out of
the comparison, each named in :func:`known_difference`.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple

import h11
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from powerlb.http11 import MAX_HEAD_SIZE, ProtocolError, ResponseParser
from tests.support.upstream import Recorder

#: ("reject",) or ("accept", status, headers without the framing ones, body, keep-alive or None).
Verdict = Tuple[Any, ...]
FRAMING = (b"content-length", b"transfer-encoding")


def _verdict(status: int, headers: List[Tuple[bytes, bytes]], body: bytes, keep_alive: bool) -> Verdict:
    # h11 rewrites the framing fields (merges equal Content-Lengths, lower-cases "chunked"):
    # the framing is compared through the body and keep-alive instead.
    return ("accept", status, [(n, v) for n, v in headers if n not in FRAMING], body, keep_alive)


def powerlb_verdict(data: bytes, head_request: bool) -> Verdict:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(head_request)
    try:
        parser.feed(data)
        parser.feed_eof()
    except ProtocolError:
        return ("reject",)
    heads = [event for event in recorder.events if event[0] == "head"]
    ends = [event for event in recorder.events if event[0] == "end"]
    assert len(heads) == 1 and len(ends) == 1, recorder.events
    body = b"".join(event[1] for event in recorder.events if event[0] == "body")
    return _verdict(heads[0][1], heads[0][3], body, ends[0][1])


def h11_verdict(data: bytes, head_request: bool) -> Verdict:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE + 4)
    conn.send(h11.Request(method=b"HEAD" if head_request else b"GET", target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    head: Optional[h11.Response] = None
    body: List[bytes] = []
    try:
        for eof in (False, True):
            conn.receive_data(b"" if eof else data)
            event = conn.next_event()
            while event is not h11.NEED_DATA and not isinstance(event, h11.ConnectionClosed):
                if isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    if conn.trailing_data[0]:
                        return ("reject",)  # bytes after the response: no request asked for them
                    # Reusable: ended before the connection did, and h11 keeps it alive.
                    keep_alive = not eof and conn.their_state is h11.DONE
                    return _verdict(head.status_code, list(head.headers), b"".join(body), keep_alive)
                event = conn.next_event()
    except h11.RemoteProtocolError:
        return ("reject",)
    return ("reject",)  # closed before the end of the response


# --- where RFC 9112 lets the two differ -------------------------------------------------------

_BARE_LF = re.compile(rb"(?<!\r)\n")
_OBS_FOLD = re.compile(rb"\r\n[ \t]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9] ")
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:([^\r\n]*)", re.I)
_CHUNK_LINE_SPACE = re.compile(rb"\r\n\r\n[0-9a-fA-F]*[ \t]|\r\n[0-9a-fA-F]+[ \t]+[;\r]")
_CONTENT_LENGTH_LIST = re.compile(rb"\r\ncontent-length:[ \t]*(,|[^\r\n]*,[ \t]*(\r|$))", re.I)
_FIELD_CTL = re.compile(rb"\r\n[^\r\n:]*:[^\r\n]*[\x0b\x0c]")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:([^\r\n]*)", re.I)
_NO_BODY = re.compile(rb"HTTP/1\.[0-9] (204|304)")
#: A status line (the first, or an interim response's successor) whose reason phrase has a DEL.
_REASON_DEL = re.compile(rb"(?:^|\r\n\r\n)HTTP/[^\r\n]*\x7f")


def known_difference(data: bytes, head_request: bool = False) -> Optional[str]:
    """Why h11 and powerlb may judge ``data`` differently, both within RFC 9112, or None."""
    if _BARE_LF.search(data):
        return "a bare LF ends a line: h11 accepts it (RFC 9112 2.2 MAY), powerlb does not"
    if _OBS_FOLD.search(data):
        return "obs-fold: h11 unfolds it, powerlb answers 502 (RFC 9112 5.2 allows both)"
    for version in _VERSION.findall(data):
        if not version.startswith(b"HTTP/1."):
            return "h11 accepts any HTTP/d.d version, powerlb HTTP/1.x only"
    for codings in _TRANSFER_ENCODING.findall(data):
        if codings.strip().lower() != b"chunked":
            return "h11 supports chunked only; powerlb reads other codings to the close (RFC 9112 6.3)"
    if _CHUNK_LINE_SPACE.search(data):
        return "whitespace in a chunk size line (BWS before chunk-ext): h11 refuses it, powerlb skips it"
    lengths = [value.strip() for value in _CONTENT_LENGTH.findall(data)]
    if len(set(lengths)) > 1 or not all(map(bytes.isdigit, lengths)):
        if _TRANSFER_ENCODING.search(data):
            return "with Transfer-Encoding, powerlb ignores Content-Length (RFC 9112 6.3); h11 checks it"
        if head_request or _NO_BODY.search(data):
            return "no body (HEAD, 204, 304): powerlb ignores Content-Length (RFC 9112 6.3); h11 checks it"
    if _CONTENT_LENGTH_LIST.search(data):
        return "empty list elements in Content-Length: powerlb ignores them (RFC 9110 5.6.1), h11 refuses"
    if _FIELD_CTL.search(data):
        return "VT or FF in a field value: h11 refuses, powerlb keeps it (RFC 9110 5.5 MAY retain)"
    if _REASON_DEL.search(data):
        return "DEL in a reason phrase (not VCHAR, RFC 9112 4): h11 accepts it, powerlb refuses"
    return None


def reuse_may_differ(data: bytes) -> bool:
    """powerlb keeps HTTP/1.0 keep-alive connections (h11 never does), and does not reuse a
    connection whose response had both Content-Length and Transfer-Encoding (RFC 9112 6.3)."""
    lower = data.lower()
    both = b"\r\ncontent-length:" in lower and b"\r\ntransfer-encoding:" in lower
    return both or b"HTTP/1.0 " in data


# --- responses built from parts, then damaged ---------------------------------------------

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FIELD_BYTES = [*range(0x21, 0x7F), *range(0x80, 0x100)]

names = st.text(_TOKEN, min_size=1, max_size=8).map(str.encode)
values = st.builds(
    lambda first, inner: first + inner,
    st.binary(min_size=0, max_size=1).filter(lambda b: not b or b[0] in _FIELD_BYTES),
    st.lists(st.sampled_from([*_FIELD_BYTES, 0x20, 0x09]), max_size=12).map(bytes),
).map(lambda v: v.rstrip(b" \t"))
reasons = st.lists(st.sampled_from([*range(0x20, 0x7F), 0x09, 0x80, 0xFF]), max_size=12).map(bytes)
statuses = st.integers(min_value=102, max_value=599).filter(lambda s: s != 101)
content_lengths = st.one_of(
    st.none(),
    st.just("exact"),
    st.sampled_from([b"0", b"3", b"007", b"+5", b"5a", b"-1", b"", b"0x5", b"5, 5", b"5, 6", b"99999999999"]),
)


def chunked(pieces: List[bytes], extensions: List[bytes], trailers: List[Tuple[bytes, bytes]]) -> bytes:
    out = b""
    for index, piece in enumerate(pieces):
        extension = extensions[index % len(extensions)] if extensions else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    return out + b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


@st.composite
def responses(draw: Any) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    interims = draw(st.lists(st.sampled_from([b"100 Continue", b"103 Early Hints", b"102"]), max_size=2))
    status = draw(statuses)
    headers = draw(st.lists(st.tuples(names, values), max_size=4))
    connection = draw(st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, x", b"upgrade"]))
    if connection is not None:
        headers.append((b"Connection", connection))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close", "both"]))
    if framing in ("chunked", "both"):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
        extensions = draw(st.lists(st.sampled_from([b";a", b";a=b", b';a="q"', b";"]), max_size=2))
        payload = chunked(pieces, extensions, draw(st.lists(st.tuples(names, values), max_size=2)))
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
    else:
        payload = body
    if framing in ("length", "both"):
        length = draw(content_lengths)
        if length is not None:
            headers.append((b"Content-Length", b"%d" % len(body) if length == "exact" else length))
    head = b"".join(b"%s %s\r\n\r\n" % (version, line) for line in interims)
    head += b"%s %d %s\r\n" % (version, status, draw(reasons))
    head += b"".join(n + b": " + v + b"\r\n" for n, v in draw(st.permutations(headers)))
    return head + b"\r\n" + payload


@st.composite
def damaged(draw: Any) -> bytes:
    data = draw(responses())
    how = draw(st.sampled_from(["none", "none", "cut", "drop", "replace", "append"]))
    if how == "none" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if how == "cut":
        return data[:at]
    if how == "drop":
        return data[:at] + data[at + 1 :]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=8))
    byte = draw(st.sampled_from([b"\r", b":", b";", b"0", b"9", b"a", b"/", b"\x00", b"\x7f", b"\xff"]))
    return data[:at] + byte + data[at + 1 :]


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: x\r\n\r\n"


def compare(data: bytes, head_request: bool) -> None:
    ours, theirs = powerlb_verdict(data, head_request), h11_verdict(data, head_request)
    if ours[0] == theirs[0] == "accept" and reuse_may_differ(data):
        ours, theirs = ours[:-1], theirs[:-1]
    assert ours == theirs, data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged(), head_request=st.booleans())
@example(data=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", head_request=False)
@example(data=CHUNKED, head_request=False)
@example(data=CHUNKED, head_request=True)
@example(data=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", head_request=False)
@example(data=b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", head_request=False)
def test_powerlb_and_h11_agree(data: bytes, head_request: bool) -> None:
    assume(known_difference(data, head_request) is None)
    compare(data, head_request)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x0bK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: \x00\r\n\r\n",
    ],
    ids=["reason-cr", "reason-nul", "reason-vt", "trailer-without-colon", "trailer-nul"],
)
def test_both_refuse_control_bytes_in_the_reason_and_malformed_trailers(data: bytes) -> None:
    """Found by the comparison: powerlb relayed a reason phrase with CR or NUL, and skipped bad trailers."""
    assert known_difference(data) is None
    assert powerlb_verdict(data, False) == h11_verdict(data, False) == ("reject",)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX: a\x0bb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: +5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5a\r\n\r\n",
        b"HTTP/1.1 100 \x7fontinue\r\n\r\nHTTP/1.1 200 \r\n\r\n",
    ],
)
def test_each_known_difference_is_real_and_named(data: bytes) -> None:
    """The inputs left out of the comparison are those where the two really differ."""
    assert known_difference(data) is not None
    assert powerlb_verdict(data, False)[0] != h11_verdict(data, False)[0]
