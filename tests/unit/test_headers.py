"""Tests for powerlb.headers: lookups, hop-by-hop stripping and forwarding headers."""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any, List, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.web.http_headers import Headers as TwistedHeaders

from powerlb import headers as header_module
from powerlb import http11, responses, server
from powerlb.config import config_from_mapping
from powerlb.headers import (
    HOP_BY_HOP,
    TOKEN,
    TOKEN_PATTERN,
    USUAL_CONNECTION_OPTIONS,
    VIA_PSEUDONYM,
    BlockMemo,
    Memo,
    SharedHeaders,
    connection_tokens,
    field_value_ok,
    forward_request_headers,
    forward_response_headers,
    get_all,
    get_cookie,
    get_first,
    hop_by_hop,
    is_token,
    rememberable,
    split_tokens,
    strip_cookie,
    strip_hop_by_hop,
)

Headers = List[Tuple[bytes, bytes]]

#: A configuration, for the request limits of server.parse_simple_request.
CONFIG = {"listen": "tcp:0", "backends": ["http://127.0.0.1:9"]}

SAMPLE: Headers = [
    (b"host", b"example.com"),
    (b"accept", b"text/html"),
    (b"x-multi", b"1"),
    (b"accept", b"*/*"),
    (b"x-multi", b"2"),
]


# --- lookups -------------------------------------------------------------------------


def test_get_all_in_order() -> None:
    assert get_all(SAMPLE, b"accept") == [b"text/html", b"*/*"]
    assert get_all(SAMPLE, b"missing") == []
    assert get_all(SAMPLE, b"Accept") == []  # names are lower-case by convention
    assert get_all(iter(SAMPLE), b"x-multi") == [b"1", b"2"]


def test_get_first() -> None:
    assert get_first(SAMPLE, b"accept") == b"text/html"
    assert get_first(SAMPLE, b"missing") is None
    assert get_first([(b"empty", b"")], b"empty") == b""


def test_split_tokens() -> None:
    assert split_tokens([b"a, b,,c ", b"", b" ,d", b"\te\t"]) == [b"a", b"b", b"c", b"d", b"e"]
    assert split_tokens([]) == []
    assert split_tokens([b"Keep-Alive"]) == [b"Keep-Alive"]


def test_connection_tokens_lowercased_over_all_fields() -> None:
    headers = [(b"connection", b"Keep-Alive, X-Foo"), (b"other", b"close"), (b"connection", b"UPGRADE")]
    assert connection_tokens(headers) == frozenset({b"keep-alive", b"x-foo", b"upgrade"})
    assert connection_tokens([]) == frozenset()


# --- hop-by-hop --------------------------------------------------------------------


def test_hop_by_hop_set() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
    } == HOP_BY_HOP


def test_strip_hop_by_hop_removes_fixed_and_listed_names() -> None:
    headers = [
        (b"connection", b"X-Secret, Keep-Alive"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"s"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"trailer", b"x-sum"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"x-keep", b"1"),
        (b"content-length", b"3"),
        (b"x-keep", b"2"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-keep", b"1"), (b"content-length", b"3"), (b"x-keep", b"2")]


def test_strip_hop_by_hop_does_not_mutate_its_argument() -> None:
    headers = [(b"connection", b"close"), (b"a", b"b")]
    strip_hop_by_hop(headers)
    assert headers == [(b"connection", b"close"), (b"a", b"b")]


# --- requests ----------------------------------------------------------------------


def test_forward_request_headers_full() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"connection", b"keep-alive, X-Hop"),
        (b"x-multi", b"a"),
        (b"x-hop", b"gone"),
        (b"content-length", b"10"),
        (b"x-forwarded-proto", b"spoofed"),
        (b"x-forwarded-host", b"spoofed"),
        (b"via", b"1.0 first"),
        (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
        (b"x-multi", b"b"),
        (b"transfer-encoding", b"chunked"),
        (b"via", b"1.1 second"),
    ]
    assert forward_request_headers(headers, b"10.0.0.1", b"https", b"example.com") == [
        (b"host", b"example.com"),
        (b"x-multi", b"a"),
        (b"x-multi", b"b"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"example.com"),
        (b"via", b"1.0 first, 1.1 second, 1.1 " + VIA_PSEUDONYM),
    ]


def test_forward_request_headers_minimal() -> None:
    assert forward_request_headers([], b"::1", b"http", None) == [
        (b"x-forwarded-for", b"::1"),
        (b"x-forwarded-proto", b"http"),
        (b"via", b"1.1 powerlb"),
    ]


def test_forward_request_headers_ignores_empty_prior_values() -> None:
    out = forward_request_headers([(b"x-forwarded-for", b""), (b"via", b" ")], b"9.9.9.9", b"http", None)
    assert get_all(out, b"x-forwarded-for") == [b"9.9.9.9"]
    assert get_all(out, b"via") == [b"1.1 powerlb"]


def test_forward_request_headers_does_not_mutate() -> None:
    headers = [(b"host", b"h"), (b"content-length", b"1")]
    forward_request_headers(headers, b"1.2.3.4", b"http", b"h")
    assert headers == [(b"host", b"h"), (b"content-length", b"1")]


# --- responses ---------------------------------------------------------------------


def test_forward_response_headers() -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"connection", b"keep-alive, x-internal"),
        (b"x-internal", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"via", b"1.1 backend-cache"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"proxy-authenticate", b"Basic realm=x"),
        (b"content-length", b"42"),
    ]
    assert forward_response_headers(headers) == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"42"),
        (b"via", b"1.1 backend-cache, 1.1 powerlb"),
    ]


def test_forward_response_headers_drops_length_overridden_by_transfer_encoding() -> None:
    headers = [(b"content-length", b"100"), (b"transfer-encoding", b"chunked"), (b"etag", b'"x"')]
    assert forward_response_headers(headers) == [(b"etag", b'"x"'), (b"via", b"1.1 powerlb")]


def test_forward_response_headers_keeps_prior_via_even_when_connection_names_it() -> None:
    headers = [(b"connection", b"via"), (b"via", b"1.0 a"), (b"via", b" "), (b"x", b"1")]
    assert forward_response_headers(headers) == [(b"x", b"1"), (b"via", b"1.0 a, 1.1 powerlb")]


def test_forward_response_headers_collapses_identical_lengths() -> None:
    headers = [(b"content-length", b"5, 5"), (b"content-length", b"5")]
    assert forward_response_headers(headers) == [(b"content-length", b"5"), (b"via", b"1.1 powerlb")]


# --- properties --------------------------------------------------------------------

names = st.sampled_from(
    [
        b"host",
        b"accept",
        b"x-multi",
        b"cookie",
        b"x-a",
        b"x-b",
        b"etag",
        *sorted(HOP_BY_HOP),
        b"connection",
        b"connection",
    ]
)
values = st.sampled_from([b"", b"1", b"x-a", b"X-B, close", b"keep-alive", b"Cookie", b"a b", b"x-a,x-b"])
header_lists = st.lists(st.tuples(names, values), max_size=15)


def is_hop(headers: Headers, name: bytes) -> bool:
    return name in HOP_BY_HOP or name in connection_tokens(headers)


@given(header_lists)
def test_strip_hop_by_hop_property(headers: Headers) -> None:
    out = strip_hop_by_hop(headers)
    assert not any(is_hop(headers, k) for k, _ in out)
    assert out == [(k, v) for k, v in headers if not is_hop(headers, k)]


@given(header_lists, st.sampled_from([b"http", b"https"]), st.sampled_from([None, b"h.example"]))
def test_forward_request_headers_property(headers: Headers, scheme: bytes, host: object) -> None:
    out = forward_request_headers(headers, b"1.2.3.4", scheme, host)  # type: ignore[arg-type]
    assert not any(is_hop(headers, k) for k, _ in out)
    assert get_all(out, b"content-length") == []
    end_to_end = [(k, v) for k, v in headers if not is_hop(headers, k)]
    assert out[: len(end_to_end)] == end_to_end
    assert get_all(out, b"x-forwarded-for") == [b"1.2.3.4"]
    assert get_all(out, b"x-forwarded-proto") == [scheme]
    assert get_all(out, b"x-forwarded-host") == ([] if host is None else [host])
    (via,) = get_all(out, b"via")
    assert via.endswith(b"1.1 powerlb")


@given(header_lists, st.sampled_from([None, b"h.example"]))
def test_forward_request_headers_with_known_connection_options(headers: Headers, host: object) -> None:
    """The request's Connection options, parsed once by the caller, give the same headers."""
    parsed_here = forward_request_headers(headers, b"1.2.3.4", b"http", host)  # type: ignore[arg-type]
    given_options = forward_request_headers(
        headers,
        b"1.2.3.4",
        b"http",
        host,
        connection_tokens(headers),  # type: ignore[arg-type]
    )
    assert given_options == parsed_here


@given(
    header_lists,
    st.lists(
        st.tuples(
            st.sampled_from([b"1.2.3.4", b"::1"]),
            st.sampled_from([b"http", b"https"]),
            st.sampled_from([None, b"h.example"]),
            st.sampled_from([None, frozenset(), frozenset({b"x-a"})]),
            st.sampled_from([None, b"x-request-id"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_forward_request_headers_of_shared_headers_are_kept_for_what_was_asked(
    headers: Headers, asks: List[Tuple[Any, ...]]
) -> None:
    """Shared headers (a header block seen before) keep the forwarded headers last asked for: the same
    as a list's, for any client's address, and worked out again when asked with other arguments."""
    shared = SharedHeaders(headers)
    for ask in asks:
        out = forward_request_headers(shared, *ask)
        assert out == forward_request_headers(headers, *ask)
        view = shared.forwarded_request
        assert view[0] == ask[1:]  # kept for all but the client's address
        for client in (b"10.0.0.1", ask[0]):
            assert forward_request_headers(shared, client, *ask[1:]) == forward_request_headers(
                headers, client, *ask[1:]
            )
            assert shared.forwarded_request is view


@given(header_lists, st.sampled_from([b"x-a", b"x-request-id", b"cookie"]))
def test_forward_request_headers_drops_the_replaced_field(headers: Headers, replaced: bytes) -> None:
    """The field the caller sets itself (the request id's) is dropped in the same pass."""
    out = forward_request_headers(headers, b"1.2.3.4", b"http", None, replaced=replaced)
    expected = forward_request_headers(headers, b"1.2.3.4", b"http", None)
    assert out == [(k, v) for k, v in expected if k != replaced]


@given(header_lists)
def test_forward_response_headers_property(headers: Headers) -> None:
    out = forward_response_headers(headers)
    assert not any(is_hop(headers, k) for k, _ in out)
    end_to_end = [(k, v) for k, v in headers if not is_hop(headers, k)]
    assert out[:-1] == end_to_end
    assert out[-1] == (b"via", b"1.1 powerlb")


def forward_response_headers_by_rule(headers: Headers) -> Headers:
    """:func:`forward_response_headers` as its rule reads, field by field with no shortcut."""
    drop = HOP_BY_HOP | frozenset(
        t.lower() for t in split_tokens(v for k, v in headers if k == b"connection")
    )
    chunked = any(k == b"transfer-encoding" for k, _ in headers)
    prior_via = [v for k, v in headers if k == b"via" and v.strip(b" \t")]
    out = []
    for k, v in headers:
        if k == b"content-length":
            if chunked or k in drop or any(name == k for name, _ in out):
                continue
            v = (split_tokens([v]) or [v])[0]
        elif k in drop or k == b"via":
            continue
        out.append((k, v))
    return [*out, (b"via", b", ".join([*prior_via, b"1.1 powerlb"]))]


framing_names = st.sampled_from(
    [b"content-length", b"content-length", b"transfer-encoding", b"via", b"connection", b"x-a", b"etag"]
)
framing_values = st.sampled_from(
    [
        *b"5 x keep-alive Keep-Alive close Close Upgrade upgrade content-length via".split(),
        *(b"5, 5", b" 7", b"", b"x-a, Close", b"1.0 a", b" "),
    ]
)


@settings(max_examples=400)
@given(st.lists(st.tuples(framing_names, framing_values), max_size=8))
@example([(b"content-length", b" 7")])
def test_forward_response_headers_follows_the_rule(headers: Headers) -> None:
    """The shortcuts (no Connection header, the usual Connection values, one plain length) give
    what the rule gives."""
    assert forward_response_headers(headers) == forward_response_headers_by_rule(headers)


@given(st.lists(st.tuples(framing_names, framing_values), max_size=4))
def test_connection_options_shortcut(headers: Headers) -> None:
    """The usual Connection values, read once at import, give what reading them gives."""
    options = connection_tokens(headers)
    assert options == frozenset(t.lower() for t in split_tokens(get_all(headers, b"connection")))
    assert hop_by_hop(options) == HOP_BY_HOP | options


# --- cookies ---

COOKIES: Headers = [
    (b"host", b"example.com"),
    (b"cookie", b"a=1; lb=0123abcd;theme=dark"),
    (b"cookie", b"lb=second"),
    (b"x-lb", b"lb=not-a-cookie"),
]


def test_get_cookie() -> None:
    assert get_cookie(COOKIES, b"lb") == b"0123abcd"  # the first one
    assert get_cookie(COOKIES, b"theme") == b"dark"
    assert get_cookie(COOKIES, b"a") == b"1"
    assert get_cookie(COOKIES, b"LB") is None  # names are case-sensitive
    assert get_cookie(COOKIES, b"l") is None
    assert get_cookie([(b"cookie", b"lbx=1; xlb=2")], b"lb") is None
    assert get_cookie([(b"cookie", b"lb=")], b"lb") == b""
    assert get_cookie([], b"lb") is None


def test_strip_cookie() -> None:
    assert strip_cookie(COOKIES, b"lb") == [
        (b"host", b"example.com"),
        (b"cookie", b"a=1; theme=dark"),
        (b"x-lb", b"lb=not-a-cookie"),
    ]
    assert strip_cookie(COOKIES, b"nope") is COOKIES  # untouched: not even copied
    assert strip_cookie([(b"cookie", b"lb=1")], b"lb") == []


@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"lb", b"lbx"]),
            st.binary(max_size=6).filter(lambda v: b";" not in v),
        ),
        max_size=6,
    )
)
def test_strip_cookie_removes_only_that_cookie(pairs: List[Tuple[bytes, bytes]]) -> None:
    headers = [(b"cookie", b"; ".join(name + b"=" + value for name, value in pairs))] if pairs else []
    stripped = strip_cookie(headers, b"lb")
    assert get_cookie(stripped, b"lb") is None
    for name in (b"a", b"b", b"lbx"):
        assert get_cookie(stripped, name) == get_cookie(headers, name)


def test_the_token_grammar_is_one_set_of_characters() -> None:
    """RFC 9110 section 5.6.2: the regex, is_token and the pattern source agree on every byte."""
    for code in range(256):
        char = chr(code)
        expected = char.isascii() and (char.isalnum() or char in "!#$%&'*+-.^_`|~")
        assert (TOKEN.fullmatch(char) is not None) == is_token(bytes([code])) == expected, code
        assert (re.fullmatch(TOKEN_PATTERN, bytes([code])) is not None) == expected


@given(st.from_regex(TOKEN_PATTERN, fullmatch=True).map(lambda name: name.lower()))
def test_wire_name_writes_a_name_as_twisted_web_does(name: bytes) -> None:
    twisted_headers = TwistedHeaders()
    twisted_headers.setRawHeaders(name, [b"v"])
    ((written, _),) = twisted_headers.getAllRawHeaders()
    assert responses.wire_name(name) == written
    assert responses.wire_name(name) == written  # the second time from what it remembers


def test_wire_name_remembers_at_most_max_wire_names(monkeypatch: pytest.MonkeyPatch) -> None:
    remembered = responses.wire_name.__self__  # type: ignore[attr-defined]
    monkeypatch.setattr(responses, "MAX_WIRE_NAMES", len(remembered) + 1)
    assert responses.wire_name(b"x-first-odd-name") == b"X-First-Odd-Name"
    assert responses.wire_name(b"x-second-odd-name") == b"X-Second-Odd-Name"  # written, not kept
    assert b"x-first-odd-name" in remembered and b"x-second-odd-name" not in remembered


@given(st.binary(max_size=64))
@example(b"a\rb")
@example(b"\n")
@example(b"x\x00")
def test_field_value_ok_is_no_cr_lf_or_nul(value: bytes) -> None:
    assert field_value_ok(value) == (not set(value) & {ord("\r"), ord("\n"), 0})


@given(st.binary(max_size=40))
@example(b"")
@example(b"Content-Type")
@example(b"a b")
def test_is_token_is_the_token_grammar(value: bytes) -> None:
    assert is_token(value) == (TOKEN.fullmatch(value.decode("latin-1")) is not None)


@given(st.binary(max_size=80))
@example(b"Content-Type")
@example(b"X\x00")
@example(b"X" * 65)
def test_token_name_is_a_token_lower_cased_and_remembered(name: bytes) -> None:
    expected = name.lower() if is_token(name) else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(header_module, "KNOWN_NAMES", Memo(100))
        assert header_module.token_name(name) == expected
        assert header_module.token_name(name) == expected  # the second time from what it remembers
        remembered = expected if len(name) <= header_module.MAX_KNOWN_NAME_LENGTH else None
        assert header_module.KNOWN_NAMES.get(name) == remembered


def test_token_name_starts_afresh_past_max_known_names_and_keeps_no_long_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(header_module, "KNOWN_NAMES", Memo(2))
    long_name = b"X" * (header_module.MAX_KNOWN_NAME_LENGTH + 1)
    assert header_module.token_name(long_name) == long_name.lower()  # checked, not kept
    assert header_module.token_name(b"X-First") == b"x-first"
    assert header_module.token_name(b"X-Second") == b"x-second"
    assert header_module.token_name(b"X-Third") == b"x-third"  # full: the others are forgotten
    assert header_module.KNOWN_NAMES == {b"X-Third": b"x-third"}


def test_remember_field_starts_afresh_when_full_and_keeps_no_long_line_nor_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(header_module, "KNOWN_FIELDS", Memo(2))
    long_value = b"x" * header_module.MAX_KNOWN_FIELD_LENGTH
    header_module.remember_field(b"X-Long: " + long_value, (b"x-long", long_value))
    header_module.remember_field(b"Authorization: Basic YTpi", (b"authorization", b"Basic YTpi"))
    header_module.remember_field(b"Cookie: a=1", (b"cookie", b"a=1"))
    for name in SECRET_NAMES:
        header_module.remember_field(name + b": secret", (name, b"secret"))
    assert header_module.KNOWN_FIELDS == {}
    header_module.remember_field(b"Server: a", (b"server", b"a"))
    header_module.remember_field(b"Server: b", (b"server", b"b"))
    header_module.remember_field(b"Server: c", (b"server", b"c"))  # full: the others are forgotten
    assert header_module.KNOWN_FIELDS == {b"Server: c": (b"server", b"c")}


def test_a_remembered_line_gives_the_pair_it_was_parsed_into(monkeypatch: pytest.MonkeyPatch) -> None:
    fields: Memo[bytes, Tuple[bytes, bytes]] = Memo(100)
    for module in (header_module, http11, server):
        monkeypatch.setattr(module, "KNOWN_FIELDS", fields)
    block = b"Server:  nginx \t\r\nCookie: a=1\r\nContent-Length: 0"
    first = http11._parse_header_block(block)  # (names seen first line by line)
    assert http11._parse_header_block(block) == first
    assert set(fields) == {b"Server:  nginx \t", b"Content-Length: 0"}
    assert http11._parse_header_block(block) == first  # from what it remembers
    assert first[0] == [(b"server", b"nginx"), (b"cookie", b"a=1"), (b"content-length", b"0")]
    request = b"GET / HTTP/1.1\r\nServer:  nginx \t\r\nHost: x\r\n\r\n"  # a line seen in a response
    assert server.parse_simple_request(request, server.Limits(config_from_mapping(CONFIG))) == (
        b"GET",
        b"/",
        [(b"server", b"nginx"), (b"host", b"x")],
    )
    assert b"Host: x" in fields


# --- forwarding while writing the head (responses.forwarded_header_lines) ---

#: A backend's usual response fields (nginx's): the one-pass way takes them.
NGINX: Headers = [
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Mon, 07 Dec 2026 16:41:11 GMT"),
    (b"content-type", b"application/octet-stream"),
    (b"content-length", b"1024"),
    (b"connection", b"keep-alive"),
    (b"etag", b'"6b164408-400"'),
    (b"cache-control", b"no-store"),
]


def test_forwarded_header_lines_writes_the_usual_fields_in_one_pass() -> None:
    parts: List[bytes] = [b"HTTP/1.1 200 OK\r\n"]
    assert responses.forwarded_header_lines(parts, NGINX) == (True, True)
    assert b"".join(parts) == (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: nginx/1.22.1\r\n"
        b"Date: Mon, 07 Dec 2026 16:41:11 GMT\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: 1024\r\n"
        b'ETag: "6b164408-400"\r\n'
        b"Cache-Control: no-store\r\n"
        b"Via: 1.1 powerlb\r\n"
    )


forwarded_names = st.sampled_from(
    [*sorted(HOP_BY_HOP), b"connection", b"content-length", b"content-length", b"date", b"via",
     b"x-cache", b"close", b"x-a", b"etag"]
)  # fmt: skip
forwarded_values = st.sampled_from(
    [
        *b"5 x keep-alive Keep-Alive close Close Upgrade upgrade x-a".split(),
        *(b"5, 5", b" 7", b"", b"x-a, Close"),
    ]
)


@settings(max_examples=500)
@given(st.lists(st.tuples(forwarded_names, forwarded_values), max_size=8))
@example(NGINX)
@example([(b"close", b"x"), (b"connection", b"close")])
@example([(b"x-a", b"1"), (b"connection", b"x-a")])
def test_forwarded_header_lines_is_header_lines_of_forward_response_headers(headers: Headers) -> None:
    """In one pass, what writing forward_response_headers' fields gives; or None, leaving the parts as
    they were (the caller then takes that way)."""
    expected_parts: List[bytes] = [b"status line"]
    expected = responses.header_lines(expected_parts, forward_response_headers(headers))
    parts: List[bytes] = [b"status line"]
    found = responses.forwarded_header_lines(parts, headers)
    if found is None:
        assert parts == [b"status line"]
        names = {name for name, _ in headers}
        lengths = get_all(headers, b"content-length")
        connection = get_all(headers, b"connection")
        unusual = [value for value in connection if value not in USUAL_CONNECTION_OPTIONS]
        assert (
            names & {b"transfer-encoding", b"via", b"close"}
            or unusual
            or len(lengths) > 1
            or not all(value.isdigit() for value in lengths)
        ), headers
    else:
        assert (found, b"".join(parts)) == (expected, b"".join(expected_parts))
    shared = SharedHeaders(headers)
    for _ in range(2):  # worked out, then the view kept on the shared list
        shared_parts: List[bytes] = [b"status line"]
        assert responses.forwarded_header_lines(shared_parts, shared) == found
        assert b"".join(shared_parts) == b"".join(parts)


# --- shared header lists and the memos of what comes again and again ---


def test_shared_headers_are_never_changed_in_place() -> None:
    """A change would reach every message with the block: each way of making one is refused; the
    ways that make a new list work, and copies are shared lists of their own."""
    shared = SharedHeaders(NGINX)
    changes = [
        lambda: shared.append((b"x", b"1")),
        lambda: shared.extend([(b"x", b"1")]),
        lambda: shared.insert(0, (b"x", b"1")),
        lambda: shared.pop(),
        lambda: shared.remove(NGINX[0]),
        lambda: shared.clear(),
        lambda: shared.sort(),
        lambda: shared.reverse(),
        lambda: shared.__setitem__(0, (b"x", b"1")),
        lambda: shared.__delitem__(0),
        lambda: shared.__iadd__([(b"x", b"1")]),
        lambda: shared.__imul__(2),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="not changed in place"):
            change()
    assert shared == NGINX
    assert shared + [(b"x", b"1")] == [*NGINX, (b"x", b"1")]  # noqa: RUF005 (a new list: allowed)
    assert type(shared[:]) is list
    for copied in (copy.copy(shared), copy.deepcopy(shared), pickle.loads(pickle.dumps(shared))):
        assert type(copied) is SharedHeaders and copied == shared and copied.forwarded is None


def test_a_memo_starts_afresh_when_full() -> None:
    memo: Memo[bytes, int] = Memo(2)
    memo.remember(b"a", 1)
    memo.remember(b"b", 2)
    memo.remember(b"c", 3)
    assert memo == {b"c": 3}


def test_a_request_header_block_seen_before_gives_the_same_shared_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memo: BlockMemo[Headers] = BlockMemo(4)
    monkeypatch.setattr(server, "KNOWN_REQUEST_BLOCKS", memo)
    limits = server.Limits(config_from_mapping(CONFIG))
    request = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    once = server.parse_simple_request(request, limits)
    assert once is not None and type(once[2]) is list and not memo  # the first sight is only noted
    first = server.parse_simple_request(request, limits)
    again = server.parse_simple_request(b"HEAD /b" + request[6:], limits)  # the same block
    assert first is not None and again is not None and again[:2] == (b"HEAD", b"/b")
    assert first[2] == once[2] == [(b"host", b"x"), (b"accept", b"*/*")] and again[2] is first[2]
    assert type(first[2]) is SharedHeaders and list(memo) == [b"Host: x\r\nAccept: */*"]
    tighter = server.Limits(config_from_mapping({**CONFIG, "max-headers": 1}))
    assert server.parse_simple_request(request, tighter) is None  # a listener's own limits still hold
    longer = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n"
    for _ in range(2):
        assert server.parse_simple_request(longer, tighter) is None
    assert len(memo) == 1  # refused: not kept
    with_cookie = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: session=1\r\n\r\n"
    for _ in range(2):
        parsed = server.parse_simple_request(with_cookie, limits)
        assert parsed is not None and type(parsed[2]) is list and len(memo) == 1
    assert server.parse_simple_request(b"GET / HTTP/1.1\r\n\r\n", limits) == (b"GET", b"/", [])


SECRET_NAMES = [
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"set-cookie",
    b"x-api-key",
    b"x-auth-token",
    b"private-token",
    b"x-amz-security-token",
    b"x-forwarded-access-token",
    b"authentication-info",
    b"x-session-id",
    b"x-client-secret",
    b"x-signature",
]


def test_a_block_with_credentials_or_too_long_is_not_rememberable() -> None:
    assert rememberable(b"Server: x", [(b"server", b"x")])
    for name in SECRET_NAMES:
        assert not rememberable(b"...", [(b"server", b"x"), (name, b"secret")])
    long_block = b"X: " + b"x" * header_module.MAX_KNOWN_BLOCK_LENGTH
    assert not rememberable(long_block, [(b"x", long_block[3:])])
