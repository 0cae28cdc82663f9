"""Tests for powerlb.http11: the sans-IO response parser and the request serializer."""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powerlb import http11
from powerlb.headers import BlockMemo, SharedHeaders, split_tokens
from powerlb.http11 import (
    _FRAMING_NAMES,
    _LENGTH,
    MAX_CHUNK_LINE,
    MAX_HEAD_SIZE,
    ProtocolError,
    ResponseParser,
    _body_framing,
    _parse_header_block,
    _parse_header_lines,
    _parse_status_line,
    _parse_status_line_by_parts,
    serialize_request_head,
)
from tests.support.upstream import Event, Recorder


def merged(events: List[Event]) -> List[Event]:
    """``events`` with consecutive body pieces joined (how a split stream should compare)."""
    out: List[Event] = []
    for event in events:
        if event[0] == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", out[-1][1] + event[1])
        else:
            out.append(event)
    return out


def parse(
    *pieces: bytes, head_request: bool = False, eof: bool = False
) -> Tuple[ResponseParser, List[Event]]:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(head_request)
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.feed_eof()
    return parser, merged(recorder.events)


def rejects(data: bytes, head_request: bool = False, eof: bool = False) -> List[Event]:
    """Feed ``data``; assert it raises ProtocolError; return the events seen before."""
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(head_request)
    with pytest.raises(ProtocolError):
        parser.feed(data)
        if eof:
            parser.feed_eof()
    return merged(recorder.events)


OK_HEAD = ("head", 200, b"OK")


# --- framing -----------------------------------------------------------------------


def test_content_length_body() -> None:
    parser, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
    assert events == [
        ("head", 200, b"OK", [(b"content-length", b"5"), (b"x-a", b"b")]),
        ("body", b"hello"),
        ("end", True),
    ]
    assert parser.idle


def test_content_length_zero_ends_at_once() -> None:
    parser, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert events == [(*OK_HEAD, [(b"content-length", b"0")]), ("end", True)]
    assert parser.idle


def test_content_length_waits_for_the_whole_body() -> None:
    parser, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert events[1:] == [("body", b"hello")]
    assert not parser.idle
    with pytest.raises(ProtocolError):
        parser.feed_eof()


@pytest.mark.parametrize(
    ("pieces", "head_request", "wholes"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], False, 1),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], False, 1),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], True, 1),  # HEAD: no body
        ([b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"], False, 1),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"], False, 0),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"], False, 0),
    ],
    ids=["length", "empty", "head", "304", "split-body", "chunked"],
)
def test_a_response_all_in_hand_as_its_head_is_read_comes_whole(
    pieces: List[bytes], head_request: bool, wholes: int
) -> None:
    """One ``response_whole`` instead of head, body and end when the head's read holds the whole
    response; otherwise the parts (the events mean the same: the Recorder records a whole as parts)."""
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(head_request)
    for piece in pieces:
        parser.feed(piece)
    assert recorder.wholes == wholes
    assert parser.idle


def test_header_names_lowercased_values_stripped_reason_kept() -> None:
    _, events = parse(b"HTTP/1.1 404 Not  Found here\r\nX-Thing:\t  v a l \t\r\nEmpty:\r\n\r\n", eof=True)
    assert events[0] == ("head", 404, b"Not  Found here", [(b"x-thing", b"v a l"), (b"empty", b"")])


def test_status_line_without_reason() -> None:
    _, events = parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert events[0] == ("head", 200, b"", [(b"content-length", b"0")])


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'6 ; a=1;b="x"\r\n world\r\n'
        b"A\r\n0123456789\r\n"
        b"0;last\r\nExpires: never\r\nX-Checksum: 1\r\n\r\n"
    )
    parser, events = parse(data)
    assert events == [
        (*OK_HEAD, [(b"transfer-encoding", b"chunked")]),
        ("body", b"hello world0123456789"),
        ("end", True),
    ]
    assert parser.idle


def test_chunked_without_trailers() -> None:
    _, events = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert events[1:] == [("body", b"abc"), ("end", True)]


def test_chunked_uppercase_hex_and_leading_zeros() -> None:
    _, events = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n00B\r\nhello world\r\n000\r\n\r\n"
    )
    assert events[1:] == [("body", b"hello world"), ("end", True)]


def test_transfer_encoding_not_ending_in_chunked_reads_until_close() -> None:
    parser, events = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 3\r\n\r\nabcdef"
    )
    assert events[1:] == [("body", b"abcdef")]
    parser.feed_eof()
    assert parser.idle


def test_transfer_encoding_overrides_content_length_but_forbids_reuse() -> None:
    _, events = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    assert events[1:] == [("body", b"hi"), ("end", False)]


def test_close_delimited_body() -> None:
    parser, events = parse(b"HTTP/1.1 200 OK\r\n\r\nsome", b" more")
    assert events[1:] == [("body", b"some more")]
    parser.feed_eof()
    recorder_events = merged(parser._events.events)
    assert recorder_events[-1] == ("end", False)
    assert parser.idle


def test_close_delimited_empty_body() -> None:
    _, events = parse(b"HTTP/1.1 200 OK\r\n\r\n", eof=True)
    assert events == [(*OK_HEAD, []), ("end", False)]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    parser, events = parse(
        b"HTTP/1.1 %d X\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n" % status
    )
    assert [e[0] for e in events] == ["head", "end"]
    assert events[-1] == ("end", True)
    assert parser.idle


def test_head_response_has_no_body() -> None:
    parser, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head_request=True)
    assert events == [(*OK_HEAD, [(b"content-length", b"1234")]), ("end", True)]
    assert parser.idle


def test_head_response_without_length_keeps_connection() -> None:
    _, events = parse(b"HTTP/1.1 200 OK\r\n\r\n", head_request=True)
    assert events[-1] == ("end", True)


INTERIM_THEN_FINAL = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 102 Processing\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
)
INTERIM_THEN_FINAL_EVENTS = [
    ("interim", 100, b"Continue", []),
    ("interim", 102, b"Processing", []),
    (
        "interim",
        103,
        b"Early Hints",
        [(b"link", b"</a.css>; rel=preload"), (b"link", b"</b.js>; rel=preload")],
    ),
    ("head", 201, b"Created", [(b"content-length", b"2")]),
    ("body", b"ok"),
    ("end", True),
]


def test_interim_responses_are_reported_apart_from_the_final_one() -> None:
    parser, events = parse(INTERIM_THEN_FINAL)
    assert events == INTERIM_THEN_FINAL_EVENTS
    assert parser.idle


@pytest.mark.parametrize("cut", range(1, len(INTERIM_THEN_FINAL)))
def test_interim_responses_however_split(cut: int) -> None:
    _, events = parse(INTERIM_THEN_FINAL[:cut], INTERIM_THEN_FINAL[cut:])
    assert events == INTERIM_THEN_FINAL_EVENTS


def test_interim_response_to_head_request_then_final() -> None:
    _, events = parse(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        head_request=True,
    )
    assert events == [
        ("interim", 103, b"Early Hints", [(b"link", b"</a>")]),
        (*OK_HEAD, [(b"content-length", b"9")]),
        ("end", True),
    ]


def test_interim_response_with_a_bad_header_is_rejected() -> None:
    assert rejects(b"HTTP/1.1 103 Early Hints\r\nLink : </a>\r\n\r\n") == []


def test_interim_response_then_eof_is_an_error() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert recorder.events == [("interim", 100, b"Continue", [])]
    assert not parser.idle
    with pytest.raises(ProtocolError):
        parser.feed_eof()


def test_switching_protocols_is_rejected() -> None:
    assert rejects(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n") == []


# --- keep-alive --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.1", b"x-foo, CLOSE", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"close", False),
        (b"1.0", b"keep-alive, close", False),
        (b"1.2", None, True),
    ],
)
def test_keep_alive_rules(version: bytes, connection: Optional[bytes], keep_alive: bool) -> None:
    head = b"HTTP/" + version + b" 200 OK\r\nContent-Length: 1\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    _, events = parse(head + b"\r\nx")
    assert events[-1] == ("end", keep_alive)


def test_keep_alive_from_a_second_connection_header() -> None:
    _, events = parse(
        b"HTTP/1.0 200 OK\r\nConnection: x\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    )
    assert events[-1] == ("end", True)


def test_close_delimited_body_never_keeps_alive() -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nabc", eof=True)
    assert parser._events.events[-1] == ("end", False)


# --- Content-Length validity -------------------------------------------------------


def test_conflicting_content_length_rejected_before_the_head_is_reported() -> None:
    assert rejects(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello") == []


def test_conflicting_content_length_list_rejected() -> None:
    assert rejects(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello") == []


@pytest.mark.parametrize(
    "fields",
    [[b"5", b"5"], [b"5", b" 5 "], [b"5, 5"], [b"5,5", b"5"]],
    ids=["two", "spaces", "list", "mixed"],
)
def test_identical_duplicate_content_length_accepted(fields: List[bytes]) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"Content-Length: " + f + b"\r\n" for f in fields)
    _, events = parse(head + b"\r\nhello")
    assert events[1:] == [("body", b"hello"), ("end", True)]


@pytest.mark.parametrize("value", [b"", b"-1", b"+5", b"5x", b"0x10", b"1.0", b"\xb2", b"1 2"])
def test_invalid_content_length(value: bytes) -> None:
    assert rejects(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n") == []


@pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"), reason="no limit on the digits int() reads")
@pytest.mark.parametrize("fields", [1, 2])  # the shortcut for one field, and the set of two
def test_content_length_with_more_digits_than_int_reads_is_invalid(fields: int) -> None:
    """CPython's int() refuses so many digits (ValueError): a ProtocolError, not a crash."""
    value = b"1" * (sys.get_int_max_str_digits() + 1)
    assert rejects(b"HTTP/1.1 200 OK\r\n" + (b"Content-Length: " + value + b"\r\n") * fields + b"\r\n") == []


# --- chunk errors ------------------------------------------------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "line", [b"", b"g", b"-1", b"0x5", b";ext", b" ", b"1" * 17, b"+5", b"5 5"], ids=repr
)
def test_invalid_chunk_size(line: bytes) -> None:
    rejects(CHUNKED_HEAD + line + b"\r\n")


def test_sixteen_hex_digits_accepted() -> None:
    _, events = parse(CHUNKED_HEAD + b"0000000000000003\r\nabc\r\n0\r\n\r\n")
    assert events[1:] == [("body", b"abc"), ("end", True)]


@pytest.mark.parametrize("after", [b"XX", b"\n\r", b"\rX", b"abc\r\n"])
def test_missing_crlf_after_chunk_data(after: bytes) -> None:
    rejects(CHUNKED_HEAD + b"3\r\nabc" + after)


def test_missing_crlf_after_chunk_data_split() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(CHUNKED_HEAD + b"3\r\nabc")
    parser.feed(b"\r")
    with pytest.raises(ProtocolError):
        parser.feed(b"X")


def test_chunk_size_line_too_long() -> None:
    rejects(CHUNKED_HEAD + b"1;" + b"x" * MAX_CHUNK_LINE)
    rejects(CHUNKED_HEAD + b"1;" + b"x" * MAX_CHUNK_LINE + b"\r\nx\r\n0\r\n\r\n")


def test_chunk_size_line_at_the_limit_accepted_whole_or_split() -> None:
    line = b"1;" + b"x" * (MAX_CHUNK_LINE - 2)
    data = CHUNKED_HEAD + line + b"\r\nx\r\n0\r\n\r\n"
    cut = len(CHUNKED_HEAD) + len(line) + 1
    assert parse(data)[1] == parse(data[:cut], data[cut:])[1]
    assert parse(data)[1][-1] == ("end", True)


def test_eof_inside_chunked_body() -> None:
    for tail in [b"", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r\n", b"0\r\n", b"0\r\nX: y\r\n"]:
        parser, _ = parse(CHUNKED_HEAD + tail)
        with pytest.raises(ProtocolError):
            parser.feed_eof()


def test_trailers_too_large() -> None:
    rejects(CHUNKED_HEAD + b"0\r\nX: " + b"y" * (MAX_HEAD_SIZE + 10))
    rejects(CHUNKED_HEAD + b"0\r\nX: " + b"y" * (MAX_HEAD_SIZE + 10) + b"\r\n\r\n")


# --- head errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"HTTP/1.1",
        b"HTTP/2 200 OK",
        b"HTTP/1.1x 200 OK",
        b"HTTP/1. 200 OK",
        b"http/1.1 200 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20x OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 000",
        b"HTTP/1.1  200 OK",
        b" HTTP/1.1 200 OK",
    ],
    ids=repr,
)
def test_invalid_status_line(line: bytes) -> None:
    assert rejects(line + b"\r\nContent-Length: 0\r\n\r\n") == []


@pytest.mark.parametrize(
    "line",
    [
        b" folded",
        b"\tfolded: x",
        b"X-A : b",
        b"X A: b",
        b": empty name",
        b"no colon",
        b"X(A): b",
        b"X\x00A: b",
        b"X-A: b\nX-B: c",
        b"X-A: b\x00c",
        b"X-\xe9: b",
    ],
    ids=repr,
)
def test_invalid_header_lines(line: bytes) -> None:
    assert rejects(b"HTTP/1.1 200 OK\r\nX-First: 1\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n") == []


def test_obs_fold_rejected() -> None:
    rejects(b"HTTP/1.1 200 OK\r\nX-Long: part one\r\n  part two\r\nContent-Length: 0\r\n\r\n")


def test_head_too_large_without_terminator() -> None:
    rejects(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE)


def test_head_too_large_with_terminator() -> None:
    rejects(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE + b"\r\n\r\n")


def test_head_at_the_limit_accepted_however_split() -> None:
    prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
    head = prefix + b"a" * (MAX_HEAD_SIZE - len(prefix))
    assert len(head) == MAX_HEAD_SIZE
    data = head + b"\r\n\r\n"
    whole = parse(data)[1]
    assert whole[-1] == ("end", True)
    for cut in range(len(head) - 2, len(data)):
        assert parse(data[:cut], data[cut:])[1] == whole


def test_head_one_over_the_limit_rejected_however_split() -> None:
    prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
    data = prefix + b"a" * (MAX_HEAD_SIZE + 1 - len(prefix)) + b"\r\n\r\n"
    for cut in range(len(data) - 6, len(data) + 1):
        recorder = Recorder()
        parser = ResponseParser(recorder)
        parser.expect(False)
        with pytest.raises(ProtocolError):
            parser.feed(data[:cut])
            parser.feed(data[cut:])


def test_eof_in_the_head() -> None:
    for data in [b"", b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"]:
        parser, events = parse(data)
        assert events == []
        with pytest.raises(ProtocolError):
            parser.feed_eof()


# --- connection life ---------------------------------------------------------------


def test_data_while_idle_rejected() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    assert parser.idle
    with pytest.raises(ProtocolError):
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    assert recorder.events == []


def test_extra_bytes_after_a_response_rejected() -> None:
    events = rejects(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
    assert events[1:] == [("body", b"ok"), ("end", True)]


def test_eof_while_idle_is_fine() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.feed_eof()
    parser.feed(b"")
    parser.expect(False)
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    parser.feed_eof()
    assert [e[0] for e in recorder.events] == ["head", "end"]


def test_expect_while_in_progress_rejected() -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na")
    with pytest.raises(ProtocolError):
        parser.expect(False)
    parser2, _ = parse(b"HTTP/1.1 200")
    with pytest.raises(ProtocolError):
        parser2.expect(False)


def test_two_responses_back_to_back() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert parser.idle
    parser.expect(True)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert parser.idle
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
    parser.expect(False)
    parser.feed(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nbye")
    parser.feed_eof()
    assert merged(recorder.events) == [
        (*OK_HEAD, [(b"content-length", b"3")]),
        ("body", b"abc"),
        ("end", True),
        (*OK_HEAD, [(b"content-length", b"99")]),
        ("end", True),
        (*OK_HEAD, [(b"transfer-encoding", b"chunked")]),
        ("body", b"z"),
        ("end", True),
        ("head", 500, b"Oops", [(b"connection", b"close")]),
        ("body", b"bye"),
        ("end", False),
    ]


def test_next_request_can_be_expected_from_inside_response_end() -> None:
    """A pool may send the next request from the end callback, mid-feed."""

    class Chaining(Recorder):
        def response_end(self, keep_alive: bool) -> None:
            super().response_end(keep_alive)
            parser.expect(False)

    recorder = Chaining()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na" + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
    )
    assert [e for e in recorder.events if e[0] != "head"] == [
        ("body", b"a"),
        ("end", True),
        ("body", b"b"),
        ("end", True),
    ]
    assert recorder.wholes == 2  # each came whole, the second parsed after the first's handler


# --- properties --------------------------------------------------------------------


def serialize(
    body: bytes, chunk_sizes: List[int], chunked: bool, version: bytes, connection: Optional[bytes]
) -> bytes:
    head = b"HTTP/" + version + b" 200 OK\r\nX-Test: yes\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out = [head, b"Transfer-Encoding: chunked\r\n\r\n"]
    pos = 0
    for size in chunk_sizes:
        piece = body[pos : pos + size]
        if not piece:
            break
        pos += len(piece)
        out.append(b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n")
    if pos < len(body):
        out.append(b"%X\r\n" % (len(body) - pos) + body[pos:] + b"\r\n")
    out.append(b"0\r\nX-Trailer: t\r\n\r\n")
    return b"".join(out)


def split_at(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


bodies = st.shared(st.binary(max_size=300), key="body")
responses = st.builds(
    serialize,
    body=bodies,
    chunk_sizes=st.lists(st.integers(1, 40), max_size=10),
    chunked=st.booleans(),
    version=st.sampled_from([b"1.0", b"1.1"]),
    connection=st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, foo"]),
)


def expected_keep_alive(data: bytes) -> bool:
    if b"Connection: close" in data:
        return False
    return data.startswith(b"HTTP/1.1") or b"Connection: Keep" in data or b"Connection: keep" in data


@settings(max_examples=200, deadline=None)
@given(data=responses, body=bodies, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_random_splits_give_the_same_events(data: bytes, body: bytes, cuts: List[int]) -> None:
    _, whole = parse(data)
    pieces = split_at(data, cuts)
    parser, split = parse(*pieces)
    assert split == whole
    assert parser.idle
    assert [e[0] for e in whole] in (["head", "body", "end"], ["head", "end"])
    assert whole[-1] == ("end", expected_keep_alive(data))
    assert b"".join(e[1] for e in whole if e[0] == "body") == body
    assert whole[0] == ("head", 200, b"OK", whole[0][3])
    assert whole[0][3][0] == (b"x-test", b"yes")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=responses)
def test_every_single_split_point_and_byte_by_byte(data: bytes) -> None:
    _, whole = parse(data)
    for cut in range(len(data) + 1):
        assert parse(data[:cut], data[cut:])[1] == whole
    assert parse(*[data[i : i + 1] for i in range(len(data))])[1] == whole


@settings(max_examples=100, deadline=None)
@given(first=responses, second=responses, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_two_responses_on_one_connection_however_split(first: bytes, second: bytes, cuts: List[int]) -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    stream = first + second
    boundary = len(first)
    pos = 0
    for piece in split_at(stream, [*cuts, boundary]):
        parser.feed(piece)
        pos += len(piece)
        if pos == boundary:
            assert parser.idle
            parser.expect(False)
    events = merged(recorder.events)
    assert events == parse(first)[1] + parse(second)[1]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(
        [b"", b"HTTP/1.1 200 OK\r\n", CHUNKED_HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"]
    ),
    junk=st.binary(max_size=200),
    head_request=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_arbitrary_bytes_raise_only_protocol_error(
    prefix: bytes, junk: bytes, head_request: bool, cuts: List[int]
) -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(head_request)
    try:
        for piece in split_at(prefix + junk, cuts):
            parser.feed(piece)
        parser.feed_eof()
    except ProtocolError:
        return
    assert parser.idle


@settings(max_examples=200, deadline=None)
@given(
    junk=st.binary(
        max_size=120,
    ).map(lambda b: b.replace(b"\n", b"\r\n"))
)
def test_arbitrary_crlf_rich_bytes_raise_only_protocol_error(junk: bytes) -> None:
    for prefix in (b"HTTP/1.1 200 OK\r\n", CHUNKED_HEAD):
        parser = ResponseParser(Recorder())
        parser.expect(False)
        try:
            parser.feed(prefix + junk)
            parser.feed_eof()
        except ProtocolError:
            pass


# --- the one-pass readings against the line-by-line ones ------------------------------


def outcome(read: Callable[..., Any], *args: Any) -> Any:
    """What ``read(*args)`` returns, or ("error", message) for the ProtocolError it raises."""
    try:
        return read(*args)
    except ProtocolError as e:
        return ("error", str(e))


#: Status lines from valid and invalid parts, and reasons with bytes a reason must not hold.
status_lines = st.builds(
    lambda *parts: b"".join(parts),
    st.sampled_from(b"HTTP/1.1 HTTP/1.0 HTTP/1.9 HTTP/1.x HTTP/2 http/1.1 HTTP/1.10".split()),
    st.sampled_from([b" ", b"  ", b"\t", b""]),
    st.sampled_from(b"200 099 100 999 20 2000 2x0".split()),
    st.sampled_from([b"", b" ", b"  ", b"\t"]),
    st.lists(
        st.sampled_from([b"OK", b" ", b"\t", b"\x00", b"\x08", b"\x7f", b"\xe9", b"\n", b"\r", b"\x0b"])
    ).map(b"".join),
) | st.binary(max_size=20)


@settings(max_examples=500, deadline=None)
@given(status_lines)
def test_status_line_at_once_reads_as_part_by_part(line: bytes) -> None:
    """The regular expression accepts what the part-by-part reading accepts, with the same
    result; the rest is refused with that reading's reason."""
    assert outcome(_parse_status_line, line) == outcome(_parse_status_line_by_parts, line)


header_lines = st.lists(
    st.sampled_from(
        [
            *b"Content-Length content-length Transfer-Encoding Connection X-A x(a) : 5 chunked a:b".split(),
            *(b"X A", b": ", b" ", b"\t", b"keep-alive, close", b"\r", b"\n", b"\x00", b"\xe9"),
        ]
    ),
    max_size=6,
).map(b"".join) | st.binary(max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.lists(header_lines, min_size=1, max_size=6))
def test_header_block_at_once_reads_as_line_by_line(lines: List[bytes]) -> None:
    """A block of header lines gives the headers (and the framing ones among them) that
    :func:`_parse_header_lines` gives, or is refused with its reason."""
    block = b"\r\n".join(lines)
    expected = outcome(_parse_header_lines, [b"", *block.split(b"\r\n")])
    if isinstance(expected, list):
        expected = (expected, [header for header in expected if header[0] in _FRAMING_NAMES])
    assert outcome(_parse_header_block, block) == expected


def test_every_byte_read_alike_at_once_and_part_by_part() -> None:
    """Each byte in a reason, a header name and a header value: the one-pass readings agree."""
    for byte in (bytes([code]) for code in range(256)):
        for line in (
            b"HTTP/1.1 200 O" + byte,
            b"HTTP/1." + byte + b" 200 OK",
            b"HTTP/1.1 2" + byte + b"0 OK",
        ):
            assert outcome(_parse_status_line, line) == outcome(_parse_status_line_by_parts, line)
        for line in (b"X" + byte + b": v", b"X: v" + byte + b"v", byte + b"X: v"):
            expected = outcome(_parse_header_lines, [b"", *line.split(b"\r\n")])
            if isinstance(expected, list):
                expected = (expected, [])
            assert outcome(_parse_header_block, line) == expected, line


@given(
    st.lists(
        st.sampled_from(
            [b"5", b"05", b"6", b"5, 5", b"5,", b" 5", b"5\x0b", b"", b",", b"x", b"-1", b"\xd9\xa5"]
        ),
        min_size=1,
        max_size=3,
    )
)
def test_content_length_read_as_a_set_of_list_members(values: List[bytes]) -> None:
    """One plain length is read at once; any other set of fields as a set of list members."""
    distinct = set(split_tokens(values))
    if len(distinct) != 1:
        expected: Any = ("error", "conflicting Content-Length headers")
    elif not next(iter(distinct)).isdigit():
        expected = ("error", "invalid Content-Length")
    else:
        expected = (_LENGTH, int(next(iter(distinct))), True)
    assert outcome(_body_framing, [(b"content-length", v) for v in values]) == expected


# --- serialize_request_head --------------------------------------------------------


def test_serialize_without_body() -> None:
    assert (
        serialize_request_head(
            b"GET", b"/a?b=c", [(b"host", b"example"), (b"x-a", b"1"), (b"x-a", b"2")], None
        )
        == b"GET /a?b=c HTTP/1.1\r\nhost: example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    )


def test_serialize_with_body_length() -> None:
    assert serialize_request_head(b"POST", b"/", [], 12) == b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"
    assert (
        serialize_request_head(b"PUT", b"*", [(b"h", b"")], 0)
        == b"PUT * HTTP/1.1\r\nh: \r\ncontent-length: 0\r\n\r\n"
    )


@given(
    method=st.sampled_from([b"GET", b"POST", b"DELETE"]),
    target=st.binary(min_size=1, max_size=20).filter(
        lambda t: b" " not in t and b"\r" not in t and b"\n" not in t
    ),
    headers=st.lists(
        st.tuples(
            st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).map(str.encode),
            st.text("abc xyz/;=", max_size=10).map(lambda s: s.strip().encode()),
        ),
        max_size=6,
    ),
    length=st.one_of(st.none(), st.integers(0, 10**12)),
)
def test_serialize_round_trips(
    method: bytes, target: bytes, headers: List[Tuple[bytes, bytes]], length: Any
) -> None:
    out = serialize_request_head(method, target, headers, length)
    assert out.endswith(b"\r\n\r\n")
    assert out.count(b"\r\n\r\n") == 1
    lines = out[:-4].split(b"\r\n")
    assert lines[0] == method + b" " + target + b" HTTP/1.1"
    parsed = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    extra = [] if length is None else [(b"content-length", str(length).encode())]
    assert parsed == [*headers, *extra]


# --- header blocks seen before (KNOWN_BLOCKS) ----------------------------------------


@pytest.fixture
def blocks(monkeypatch: pytest.MonkeyPatch) -> BlockMemo[http11.HeaderBlock]:
    """An empty memo of header blocks, of two at most."""
    memo: BlockMemo[http11.HeaderBlock] = BlockMemo(2)
    monkeypatch.setattr(http11, "KNOWN_BLOCKS", memo)
    return memo


def test_a_block_seen_before_gives_the_same_shared_headers(blocks: BlockMemo[http11.HeaderBlock]) -> None:
    block = b"Server: x\r\nConnection: close\r\nContent-Length: 2"
    once = http11.header_block(block)
    assert type(once.headers) is list and not blocks  # the first sight is only noted
    first = http11.header_block(block)
    assert http11.header_block(block) is first and list(blocks) == [block]
    assert type(first.headers) is SharedHeaders and first.headers == once.headers
    assert first.headers == [(b"server", b"x"), (b"connection", b"close"), (b"content-length", b"2")]
    assert (first.framing, first.keep_alive) == (first.headers[1:], False)
    response = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n\r\nhi"
    events = [(*OK_HEAD, first.headers), ("body", b"hi"), ("end", False)]
    assert parse(response)[1] == parse(response)[1] == events
    for other in (b"A: 1", b"A: 1", b"B: 1", b"B: 1"):  # full: the others are forgotten
        http11.header_block(other)
    assert list(blocks) == [b"B: 1"]


def test_blocks_that_never_come_again_do_not_push_out_those_that_do(
    blocks: BlockMemo[http11.HeaderBlock],
) -> None:
    """A per-response request id makes every block new: each is only noted, never kept."""
    usual = b"Server: x\r\nContent-Length: 0"
    http11.header_block(usual)
    kept = http11.header_block(usual)
    for number in range(10):
        unique = http11.header_block(b"Server: x\r\nX-Request-Id: %d\r\nContent-Length: 0" % number)
        assert type(unique.headers) is list
    assert list(blocks) == [usual] and http11.header_block(usual) is kept


def test_a_block_with_a_cookie_is_parsed_every_time(blocks: BlockMemo[http11.HeaderBlock]) -> None:
    block = b"Set-Cookie: a=1\r\nContent-Length: 0"
    first, again, third = (http11.header_block(block) for _ in range(3))
    assert type(third.headers) is list and first.headers == again.headers == third.headers
    assert not blocks


def test_a_remembered_block_is_framed_by_each_response_that_asks(
    blocks: BlockMemo[http11.HeaderBlock],
) -> None:
    """The body's framing is worked out when a response with a body asks: a block whose framing is
    wrong is refused every time such a response comes, never when one without a body does."""
    block = b"Content-Length: 5\r\nContent-Length: 6"
    for _ in range(2):
        assert parse(b"HTTP/1.1 204 No Content\r\n" + block + b"\r\n\r\n")[1][-1] == ("end", True)
        assert rejects(b"HTTP/1.1 200 OK\r\n" + block + b"\r\n\r\nhello") == []
    assert list(blocks) == [block]
    assert blocks[block].body is None  # a refusal is not remembered
