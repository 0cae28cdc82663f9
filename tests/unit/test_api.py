"""The runtime API's pure part: routing, bodies, backend ids, the token rule."""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.api import (
    ENDPOINTS,
    MAX_BODY,
    ApiError,
    allowed_methods,
    canonical_id,
    check_token,
    match_endpoint,
    parse_backend_change,
    parse_json_body,
    parse_new_backend,
    parse_purge,
)
from powerlb.backend import Backend, BackendSpec
from powerlb.cachepolicy import url_key


def refused(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    ("path", "endpoint", "args"),
    [
        ("v1/stats", "stats", []),
        ("v1/stats/", "stats", []),
        ("v1/backends", "backends", []),
        ("v1/backends/10.0.0.1:80", "backends/{id}", ["10.0.0.1:80"]),
        ("v1/backends/[::1]:80/", "backends/{id}", ["[::1]:80"]),
        ("v1/cache/purge", "cache/purge", []),
        ("v1/config", "config", []),
    ],
)
def test_match_endpoint(path: str, endpoint: str, args: List[str]) -> None:
    assert match_endpoint(path.split("/")) == (endpoint, args)


@pytest.mark.parametrize(
    "path", ["", "v1", "v2/stats", "v1/stats/x", "v1/backends/a/b", "v1/cache", "v1//stats"]
)
def test_match_endpoint_404(path: str) -> None:
    error = refused(match_endpoint, path.split("/"))
    assert error.status == 404
    assert error.message.startswith(f"no such endpoint /api/{path.rstrip('/')};")
    assert "/api/v1/backends/{id}" in error.message


@given(
    st.lists(st.sampled_from(["v1", "stats", "backends", "cache", "purge", "config", "x", ""]), max_size=4)
)
def test_match_endpoint_finds_exactly_the_patterns(segments: List[str]) -> None:
    parts = segments[:-1] if segments and segments[-1] == "" else segments
    try:
        endpoint, args = match_endpoint(segments)
    except ApiError as error:
        assert error.status == 404
        assert not any(
            parts[:1] == ["v1"]
            and len(pattern.split("/")) == len(parts) - 1
            and all(p in ("{id}", s) for p, s in zip(pattern.split("/"), parts[1:]))
            for pattern in ENDPOINTS
        )
        return
    pattern = endpoint.split("/")
    assert parts[0] == "v1" and len(pattern) == len(parts) - 1
    assert [s for p, s in zip(pattern, parts[1:]) if p == "{id}"] == args


def test_allowed_methods_add_head_to_get() -> None:
    assert allowed_methods("backends/{id}") == ("GET", "PATCH", "DELETE", "HEAD")
    assert allowed_methods("cache/purge") == ("POST",)


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"Application/JSON; charset=utf-8", b"a/b+json"]
)
def test_json_bodies(content_type: bytes) -> None:
    assert parse_json_body(content_type, b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        (None, b"{}", 415, "send the body as JSON with Content-Type: application/json"),
        (b"text/json-ish", b"{}", 415, "send the body as JSON"),
        (b"application/json", b"", 400, "the body is not valid JSON"),
        (b"application/json", b"\xff", 400, "the body is not valid JSON"),
        (b"application/json", b"[1]", 400, "the body must be a JSON object, not list"),
        (b"application/json", b"null", 400, "the body must be a JSON object, not NoneType"),
        (b"application/json", b" " * (MAX_BODY + 1), 413, f"the body is longer than {MAX_BODY} bytes"),
    ],
)
def test_bad_bodies(content_type: Optional[bytes], body: bytes, status: int, message: str) -> None:
    error = refused(parse_json_body, content_type, body)
    assert (error.status, message in error.message) == (status, True)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("Example.COM:81", "example.com:81"),
        ("example.com", "example.com:80"),
        ("[::1]:80", "[::1]:80"),
        ("[::1]", "[::1]:80"),
    ],
)
def test_canonical_id(text: str, canonical: str) -> None:
    assert canonical_id(text) == canonical


@pytest.mark.parametrize(
    "text", ["", "a:b", "a:0", "a:70000", "u@a:1", "a:1,weight=2", "a b:1", "a:1?x", "[::1"]
)
def test_bad_ids_get_400(text: str) -> None:
    error = refused(canonical_id, text)
    assert error.status == 400
    assert error.message == f"{text!r} is not a backend id; write host:port as in the backend's URL"


@given(
    host=st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    ),
    port=st.integers(1, 65535),
)
def test_a_backend_is_found_by_its_own_id(host: str, port: int) -> None:
    spec = parse_new_backend({"url": f"http://{host}:{port}"})
    backend = Backend(spec)
    assert canonical_id(backend.id) == backend.id
    assert canonical_id(backend.id.upper()) == backend.id
    assert backend.url == f"http://{backend.id}"


def test_new_backends_are_read_like_the_config() -> None:
    assert parse_new_backend({"url": "http://h:1", "weight": 3, "backup": True}) == BackendSpec(
        "http://h:1", "h", 1, weight=3, backup=True
    )
    error = refused(parse_new_backend, {"url": "http://h:1", "weight": 0})
    assert (error.status, error.message) == (
        400,
        "backend: 'http://h:1,weight=0' has weight '0'; give a whole number >= 1",
    )


@pytest.mark.parametrize(
    ("body", "change"),
    [
        ({"weight": 3}, (3, None)),
        ({"weight": "7"}, (7, None)),
        ({"state": "draining"}, (None, "draining")),
        ({"weight": 2, "state": "disabled"}, (2, "disabled")),
        ({"state": "enabled"}, (None, "enabled")),
    ],
)
def test_backend_changes(body: Any, change: Any) -> None:
    assert parse_backend_change(body, "h:1") == change


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'nothing to change; give {"weight": N} and/or {"state": "enabled"}'),
        ({"weight": 0}, "weight: 'h:1' has weight '0'; give a whole number >= 1"),
        ({"weight": True}, "weight: 'h:1' has weight 'True'; give a whole number >= 1"),
        ({"weight": [2]}, "weight: 'h:1' has weight '[2]'; give a whole number >= 1"),
        ({"weight": 10**9}, "give a whole number >= 1"),
        ({"state": "Enabled"}, "state: 'Enabled' is not a state; give one of: enabled, draining, disabled"),
        ({"state": ["enabled"]}, "state: ['enabled'] is not a state"),
        ({"weight": 2, "url": "x"}, "unknown key 'url'; give weight and/or state"),
    ],
)
def test_bad_backend_changes(body: Any, message: str) -> None:
    error = refused(parse_backend_change, body, "h:1")
    assert error.status == 400
    assert message in error.message


def test_purges() -> None:
    assert parse_purge({"url": "http://h/x?y"}) == (url_key(b"http://h/x?y"), False)
    assert parse_purge({"prefix": "http://h/img/"}) == (url_key(b"http://h/img/"), True)
    for body in ({}, {"url": "http://h/", "prefix": "http://h/"}, {"URL": "http://h/"}):
        assert "give exactly one of" in refused(parse_purge, body).message
    for body in ({"url": "/x"}, {"prefix": None}, {"url": "ftp://h/"}):
        error = refused(parse_purge, body)
        assert (error.status, "is not an absolute URL; write http://host/path" in error.message) == (
            400,
            True,
        )


def test_token_rule() -> None:
    error = refused(check_token, b"Bearer x", None)
    assert (error.status, error.message) == (403, "set admin-token to enable changes through the API")
    check_token(b"Bearer s3cret", b"s3cret")
    check_token(b"bearer  s3cret ", b"s3cret")
    for given_header in (
        None,
        b"",
        b"s3cret",
        b"Basic s3cret",
        b"Bearer",
        b"Bearer s3cre",
        b"Bearer s3crett",
    ):
        assert refused(check_token, given_header, b"s3cret").status == 401


def test_json_errors_are_one_line() -> None:
    error = refused(parse_json_body, b"application/json", b'{\n"a": }')
    # the parser's own words differ between CPython and PyPy; both say where
    assert error.message.startswith("the body is not valid JSON (") and "line 2" in error.message
    assert "\n" not in error.message
