"""The admin purge endpoint: POST /_powerlb/purge?url=... or ?prefix=..., bearer token required."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.test_cache_rfc import fetch, origin


async def purge(http: Any, lb: Any, query: str, token: bytes = b"") -> Any:
    headers = {b"Authorization": [b"Bearer " + token]} if token else {}
    response = await http.post(lb.admin_url + "/_powerlb/purge?" + query, headers=headers)
    response.json_body = await response.json()
    return response


@pytest_twisted.ensureDeferred
async def test_purge_is_off_without_an_admin_token(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1")
    response = await purge(http, lb, "url=http://x/")
    assert response.code == 403
    assert "set admin-token to enable purge" in response.json_body["error"]


@pytest_twisted.ensureDeferred
async def test_purge_needs_the_right_bearer_token(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1", admin_token="s3cret")
    for token in (b"", b"wrong"):
        response = await purge(http, lb, "url=http://x/", token)
        assert response.code == 401
        assert response.headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Bearer")
    assert (await purge(http, lb, "", b"s3cret")).code == 400
    assert (await purge(http, lb, "url=/relative", b"s3cret")).code == 400


@pytest_twisted.ensureDeferred
async def test_purge_one_url_and_a_prefix(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    for path in (b"/img/1", b"/img/2", b"/page"):
        a.routes[path] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1", admin_token="s3cret")
    for path in ("/img/1", "/img/2", "/page"):
        await fetch(http, lb.url + path)
    one = await purge(http, lb, f"url={lb.url}/page", b"s3cret")
    assert (one.code, one.json_body) == (200, {"purged": 1})
    assert (await fetch(http, lb.url + "/page")).x_cache == b"MISS"
    prefix = await purge(http, lb, f"prefix={lb.url}/img/", b"s3cret")
    assert prefix.json_body == {"purged": 2}
    assert (await fetch(http, lb.url + "/img/1")).x_cache == b"MISS"
    assert (await fetch(http, lb.url + "/page")).x_cache == b"HIT"
    stats = await (await http.get(lb.admin_url + "/_powerlb/stats")).json()
    assert stats["cache"]["purged"] == 3


@pytest_twisted.ensureDeferred
async def test_purge_with_the_cache_off(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1", admin_token="t", cache_size=0)
    assert (await purge(http, lb, "url=http://x/", b"t")).code == 404
