"""The admin listener's state-changing endpoints, bearer token required: purge, drain, weight."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import pytest_twisted

from powerlb.config import parse_admin_endpoint
from tests.test_backends_e2e import backends_hit
from tests.test_cache_rfc import fetch, origin

ADMIN = "tcp:0:interface=127.0.0.1"


async def admin_post(http: Any, lb: Any, path: str, query: str, token: bytes = b"") -> Any:
    """POST ``/_powerlb/<path>?<query>`` to the admin listener; the JSON body is ``json_body``."""
    headers = {b"Authorization": [b"Bearer " + token]} if token else {}
    response = await http.post(f"{lb.admin_url}/_powerlb/{path}?{query}", headers=headers)
    response.json_body = await response.json()
    return response


async def purge(http: Any, lb: Any, query: str, token: bytes = b"") -> Any:
    return await admin_post(http, lb, "purge", query, token)


async def backend_stats(http: Any, lb: Any) -> Any:
    """The per-backend figures of ``/_powerlb/stats``, by backend URL."""
    stats = await (await http.get(lb.admin_url + "/_powerlb/stats")).json()
    return {backend["url"]: backend for backend in stats["backends"]}


@pytest_twisted.ensureDeferred
async def test_purge_is_off_without_an_admin_token(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1")
    response = await purge(http, lb, "url=http://x/")
    assert response.code == 403
    assert "set admin-token to enable this endpoint" in response.json_body["error"]


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


@pytest_twisted.ensureDeferred
async def test_drain_moves_new_requests_away_and_undo_brings_them_back(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], admin=ADMIN, admin_token="s3cret", algorithm="round-robin")
    assert Counter(await backends_hit(http, lb.url, 4)) == {"a": 2, "b": 2}
    drained = await admin_post(http, lb, "backends/drain", f"backend={a.url}", b"s3cret")
    assert (drained.code, drained.json_body) == (200, {"backend": a.url, "draining": True, "weight": 1})
    assert set(await backends_hit(http, lb.url, 4)) == {"b"}
    stats = await backend_stats(http, lb)
    assert (stats[a.url]["draining"], stats[a.url]["healthy"], stats[b.url]["draining"]) == (
        True,
        True,
        False,
    )
    undone = await admin_post(http, lb, "backends/drain", f"backend={a.url}&drain=false", b"s3cret")
    assert (undone.code, undone.json_body["draining"]) == (200, False)
    assert Counter(await backends_hit(http, lb.url, 4)) == {"a": 2, "b": 2}
    assert (await backend_stats(http, lb))[a.url]["draining"] is False


@pytest_twisted.ensureDeferred
async def test_weight_change_shows_in_the_distribution(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], admin=ADMIN, admin_token="s3cret", algorithm="weighted-round-robin")
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 4, "b": 4}
    # the backend is named as in the configuration: a trailing slash or an upper-case host is fine
    changed = await admin_post(http, lb, "backends/weight", f"backend={a.url.upper()}/&weight=3", b"s3cret")
    assert (changed.code, changed.json_body) == (200, {"backend": a.url, "draining": False, "weight": 3})
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 6, "b": 2}
    stats = await backend_stats(http, lb)
    assert (stats[a.url]["weight"], stats[a.url]["effective_weight"]) == (3, 3.0)


@pytest_twisted.ensureDeferred
async def test_backend_endpoints_need_the_token(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    off = start_powerlb([a], admin=ADMIN)
    on = start_powerlb([a], admin=ADMIN, admin_token="s3cret")
    for path, query in (
        ("backends/drain", f"backend={a.url}"),
        ("backends/weight", f"backend={a.url}&weight=2"),
    ):
        response = await admin_post(http, off, path, query, b"s3cret")
        assert response.code == 403
        assert "set admin-token to enable this endpoint" in response.json_body["error"]
        for token in (b"", b"wrong", b"s3cre"):
            response = await admin_post(http, on, path, query, token)
            assert response.code == 401
            assert response.headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Bearer")
    backend = on.service.backends[0]
    assert (backend.draining, backend.weight) == (False, 1)


@pytest.mark.parametrize(
    ("path", "query", "reason"),
    [
        ("backends/drain", "", "missing parameter backend"),
        ("backends/drain", "backend=nonsense", "is not an http:// URL"),
        ("backends/drain", "backend={url},weight=2", "give its URL only"),
        ("backends/drain", "backend={url}&drain=maybe", "drain must be true or false"),
        ("backends/drain", "backend={url}&backend={url}", "give backend once"),
        ("backends/drain", "backend={url}&weight=2", "unknown parameter 'weight'"),
        ("backends/weight", "backend={url}", "missing parameter weight"),
        ("backends/weight", "backend={url}&weight=0", "give a whole number >= 1"),
        ("backends/weight", "backend={url}&weight=1.5", "give a whole number >= 1"),
        ("backends/weight", "backend={url}&weight=", "give a whole number >= 1"),
        ("backends/weight", "weight=2", "missing parameter backend"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_get_400(make_backends, start_powerlb, http, path, query, reason):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin=ADMIN, admin_token="s3cret")
    response = await admin_post(http, lb, path, query.format(url=a.url), b"s3cret")
    assert response.code == 400
    assert reason in response.json_body["error"]
    assert "\n" not in response.json_body["error"]
    backend = lb.service.backends[0]
    assert (backend.draining, backend.weight) == (False, 1)


@pytest_twisted.ensureDeferred
async def test_unknown_backend_gets_404_and_get_gets_405(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin=ADMIN, admin_token="s3cret")
    for path, extra in (("backends/drain", ""), ("backends/weight", "&weight=2")):
        response = await admin_post(http, lb, path, "backend=http://127.0.0.1:1" + extra, b"s3cret")
        assert response.code == 404
        assert "'http://127.0.0.1:1'" in response.json_body["error"]
        assert a.url in response.json_body["error"]  # the known ones are listed
    for path in ("backends/drain", "backends/weight", "purge"):
        got = await http.get(f"{lb.admin_url}/_powerlb/{path}?backend={a.url}&weight=2")
        assert (got.code, got.headers.getRawHeaders(b"allow")) == (405, [b"POST"])
        assert "use POST" in (await got.json())["error"]
    assert (lb.service.backends[0].draining, lb.service.backends[0].weight) == (False, 1)


@pytest_twisted.ensureDeferred
async def test_admin_listener_binds_to_loopback_by_default(make_backends, start_powerlb):
    assert parse_admin_endpoint("tcp:8081") == "tcp:8081:interface=127.0.0.1"
    assert parse_admin_endpoint("tcp:8081:interface=0.0.0.0") == "tcp:8081:interface=0.0.0.0"
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0")
    assert lb.service.admin_listener.port.getHost().host == "127.0.0.1"
