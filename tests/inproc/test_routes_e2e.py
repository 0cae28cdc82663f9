"""Routes and pools end to end (issue 12): real clients, a real powerlb and real backends on
127.0.0.1. Every match kind, first match wins, no route; each pool's algorithm and health
checks; header rules, path rewriting, redirects, access lists, rate limits, request ids,
``cache: off`` and the metrics of each policy. Planning alone is in tests/inproc/test_pools.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest_twisted
import yaml
from twisted.internet import defer

from powerlb.routing import NO_ROUTE_REASON
from tests.support import REPO
from tests.support.inproc import ADMIN, exchange, fetch, headers_of, origin, scrape, slow_route, wait_for


def one_pool_each(backends: List[Any]) -> Dict[str, Any]:
    """A pool per backend, named as the backend."""
    return {backend.name: {"backends": [backend.url]} for backend in backends}


def raw_get(target: bytes, host: bytes = b"x", extra: bytes = b"") -> bytes:
    """A raw HTTP/1.1 GET of ``target`` with ``Host: host`` and the ``extra`` header lines."""
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, host, extra)


async def routed(http: Any, lb: Any, path: str = "/", host: Optional[bytes] = None, **named: Any) -> Any:
    """The response to ``path`` through ``lb``, with ``Host: host`` when given."""
    headers = {b"host": [host]} if host is not None else None
    return await fetch(http, lb.url + path, headers, **named)


@pytest_twisted.ensureDeferred
async def test_every_match_kind_and_the_first_match_wins(make_backends, start_powerlb, http):
    backends = make_backends(7)
    a = backends[0]
    routes = [
        {"host": "api.example.com", "pool": "a"},
        {"host": "*.example.com", "pool": "b"},
        {"path-prefix": "/static/", "pool": "c"},
        {"path-regex": "^/v[0-9]+/", "pool": "d"},
        {"method": "DELETE", "pool": "e"},
        {"header": {"name": "X-Canary", "value": "1"}, "pool": "f"},
        {"header": {"name": "X-Beta", "regex": "^(yes|on)$"}, "pool": "g"},
    ]
    lb = start_powerlb([a], pools=one_pool_each(backends), routes=routes)
    cases = [
        ({"host": b"api.example.com"}, "a"),
        ({"host": b"API.Example.COM:8080"}, "a"),  # case and port ignored
        ({"host": b"api.example.com", "path": "/static/x"}, "a"),  # the first match wins
        ({"host": b"www.example.com:81"}, "b"),
        ({"host": b"Deep.WWW.example.com"}, "b"),
        ({"host": b"www.example.com", "path": "/static/x"}, "b"),
        ({"path": "/static/app.js"}, "c"),
        ({"path": "/v2/users"}, "d"),
        ({"path": "/static/v2/", "x_canary": b"1"}, "c"),
        ({"path": "/x", "x_canary": b"1"}, "f"),
        ({"path": "/x", "x_beta": b"on"}, "g"),
        ({"path": "/x", "x_beta": b"yes", "x_canary": b"1"}, "f"),
    ]
    for given, pool in cases:
        response = await routed(http, lb, **{"path": "/", **given})
        assert (response.code, response.backend) == (200, pool), given
    deleted = await fetch(http, lb.url + "/x", method="DELETE")
    assert (deleted.code, deleted.backend) == (200, "e")
    for unmatched in (
        {"host": b"example.com"},  # a wildcard needs a name before the suffix
        {"host": b"api.example.org"},
        {"path": "/api/v2/"},  # the regex is anchored
        {"path": "/staticx"},
        {"path": "/x", "x_canary": b"2"},
        {"path": "/x", "x_beta": b"yess"},
    ):
        response = await routed(http, lb, **{"path": "/", **unmatched})
        assert (response.code, response.backend) == (404, "-"), unmatched
        assert NO_ROUTE_REASON in response.body
    assert sum(len(backend.requests) for backend in backends) == len(cases) + 1


@pytest_twisted.ensureDeferred
async def test_each_pool_balances_with_its_own_algorithm(make_backends, start_powerlb, http):
    a, b, c, d = make_backends(4)
    for backend in (c, d):
        backend.routes[b"/slow"] = slow_route(30)
    pools = {
        "rr": {"backends": [a.url, b.url], "algorithm": "round-robin"},
        "lc": {"backends": [c.url, d.url], "algorithm": "least-connections"},
    }
    routes = [{"path-prefix": "/slow", "pool": "lc"}, {"path-prefix": "/lc/", "pool": "lc"}, {"pool": "rr"}]
    lb = start_powerlb([a], pools=pools, routes=routes)
    served = [(await routed(http, lb, "/rr")).backend for _ in range(4)]
    assert served in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    held = http.get(lb.url + "/slow")  # one request held on c or d
    held.addErrback(lambda failure: failure.trap(defer.CancelledError))
    await wait_for(lambda: len(c.requests) + len(d.requests) == 1)
    busy = "c" if c.requests else "d"
    free = "d" if busy == "c" else "c"
    served = [(await routed(http, lb, "/lc/x")).backend for _ in range(4)]
    assert served == [free] * 4  # round-robin would have sent two to the busy one
    held.cancel()


@pytest_twisted.ensureDeferred
async def test_a_pool_is_health_checked_on_its_own_path(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    b.answer(b"/healthz", 503)
    pools = {
        "web": {"backends": [a.url]},
        "api": {"backends": [b.url], "health-path": "/healthz", "health-interval": 0.05},
    }
    routes = [{"path-prefix": "/api/", "pool": "api"}, {"pool": "web"}]
    lb = start_powerlb([a], pools=pools, routes=routes)
    api = lb.service.pools["api"]
    await wait_for(lambda: not any(backend.healthy for backend in api.backends))
    assert b"/healthz" not in [r.uri for r in a.requests]
    assert (await routed(http, lb, "/api/x")).code == 503
    assert (await routed(http, lb, "/web")).backend == "a"
    b.answer(b"/healthz", 200)
    await wait_for(lambda: all(backend.healthy for backend in api.backends))
    assert (await routed(http, lb, "/api/x")).backend == "b"


@pytest_twisted.ensureDeferred
async def test_header_rules_on_the_request_and_on_the_response_of_a_miss_and_a_hit(
    make_backends, start_powerlb, http
):
    (a,) = make_backends(1)
    a.answer(
        b"/h",
        body=b"stored",
        headers=[(b"cache-control", b"max-age=60"), (b"x-secret", b"s"), (b"x-extra", b"0")],
    )
    route = {
        "pool": "default",
        "request-headers": {"set": {"X-Env": "prod"}, "add": {"X-Via": "r1"}, "remove": ["X-Debug"]},
        "response-headers": {"set": {"X-Served": "lb"}, "add": {"X-Extra": "1"}, "remove": ["X-Secret"]},
    }
    lb = start_powerlb([a], routes=[route])
    sent = {"x_env": b"dev", "x_debug": b"1", "x_via": b"client"}
    miss = await routed(http, lb, "/h", **sent)
    hit = await routed(http, lb, "/h", **sent)
    assert (miss.x_cache, hit.x_cache) == (b"MISS", b"HIT")
    (upstream,) = a.requests
    assert upstream.header(b"x-env") == [b"prod"]
    assert upstream.header(b"x-via") == [b"client", b"r1"]
    assert upstream.header(b"x-debug") == []
    for response in (miss, hit):
        values = response.headers.getRawHeaders
        assert response.body == b"stored"
        assert values(b"x-served") == [b"lb"]
        assert values(b"x-extra") == [b"0", b"1"]
        assert values(b"x-secret") is None


@pytest_twisted.ensureDeferred
async def test_the_backend_sees_the_rewritten_path(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    routes = [
        {"path-prefix": "/api/", "strip-prefix": "/api", "add-prefix": "/v1", "pool": "default"},
        {"path-prefix": "/old/", "strip-prefix": "/old", "pool": "default"},
        {"path-prefix": "/plain/", "add-prefix": "/svc", "pool": "default"},
    ]
    lb = start_powerlb([a], routes=routes, cache_size=0)
    for path, seen in (
        ("/api/users?q=1", "/v1/users?q=1"),
        ("/old/a/b", "/a/b"),
        ("/plain/x", "/svc/plain/x"),
    ):
        response = await routed(http, lb, path)
        assert json.loads(response.body) == {"backend": "a", "uri": seen}


@pytest_twisted.ensureDeferred
async def test_redirects_answer_their_status_and_location(make_backends, start_powerlb):
    (a,) = make_backends(1)
    routes = [
        {"host": "old.example.com", "redirect": "https://new.example.com{target}", "redirect-status": 308},
        {"host": "secure.example.com", "redirect": "https://{host}{target}", "pool": "default"},
        {"pool": "default"},
    ]
    lb = start_powerlb([a], routes=routes)
    (moved,) = await exchange(lb.port, raw_get(b"/a/b?c=1", b"old.example.com"))
    status, fields, _ = headers_of(moved)
    assert (status, fields[b"location"]) == (308, b"https://new.example.com/a/b?c=1")
    (upgraded,) = await exchange(lb.port, raw_get(b"/login?next=/", b"secure.example.com:80"))
    status, fields, _ = headers_of(upgraded)
    assert (status, fields[b"location"]) == (301, b"https://secure.example.com/login?next=/")
    assert a.requests == []
    (passed,) = await exchange(lb.port, raw_get(b"/other", b"other.example.com"))
    assert headers_of(passed)[0] == 200


@pytest_twisted.ensureDeferred
async def test_access_lists_and_trusted_proxies(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    routes = [
        {"path-prefix": "/admin/", "allow": "10.0.0.0/8", "pool": "default"},
        {"path-prefix": "/private/", "deny": ["127.0.0.1"], "pool": "default"},
        {"path-prefix": "/open/", "deny": "10.0.0.0/8", "pool": "default"},
    ]
    direct = start_powerlb([a], routes=routes)
    behind = start_powerlb([a], routes=routes, trusted_proxies="127.0.0.0/8")
    elsewhere = start_powerlb([a], routes=routes, trusted_proxies="192.0.2.1")
    cases = [
        (direct, "/admin/x", None, 403),
        (direct, "/admin/x", b"10.1.2.3", 403),  # no trusted proxy: X-Forwarded-For is not read
        (direct, "/private/x", None, 403),
        (direct, "/open/x", None, 200),
        (behind, "/admin/x", b"10.1.2.3", 200),
        (behind, "/admin/x", b"192.0.2.9", 403),
        (behind, "/admin/x", b"10.1.2.3, 127.0.0.5", 200),  # the trusted hops are skipped
        (behind, "/admin/x", None, 403),
        (behind, "/private/x", b"192.0.2.9", 200),
        (behind, "/open/x", b"10.9.9.9", 403),
        (elsewhere, "/admin/x", b"10.1.2.3", 403),
    ]
    for lb, path, forwarded, status in cases:
        named = {"x_forwarded_for": forwarded} if forwarded is not None else {}
        response = await routed(http, lb, path, **named)
        assert response.code == status, (path, forwarded)
        if status == 403:
            assert b"client address not allowed on this route" in response.body
            assert response.backend == "-"


@pytest_twisted.ensureDeferred
async def test_a_rate_limit_answers_429_with_retry_after_past_its_burst(make_backends, start_powerlb):
    (a,) = make_backends(1)
    routes = [
        {"path-prefix": "/limited/", "rate-limit": "1/m", "rate-limit-burst": 3, "pool": "default"},
        {"pool": "default"},
    ]
    lb = start_powerlb([a], routes=routes)
    concurrent = [defer.ensureDeferred(exchange(lb.port, raw_get(b"/limited/%d" % i))) for i in range(5)]
    answers = [headers_of(response) for (response,) in await defer.gatherResults(concurrent)]
    assert sorted(status for status, _, _ in answers) == [200, 200, 200, 429, 429]
    for status, fields, body in answers:
        if status == 429:
            assert 1 <= int(fields[b"retry-after"]) <= 60
            assert b"rate limit exceeded" in body
    (other,) = await exchange(lb.port, raw_get(b"/other"))
    assert headers_of(other)[0] == 200


@pytest_twisted.ensureDeferred
async def test_request_ids_are_made_or_kept_forwarded_and_logged(
    make_backends, start_powerlb, http, tmp_path
):
    (a,) = make_backends(1)
    path = tmp_path / "access.log"
    lb = start_powerlb([a], routes=[{"pool": "default"}], access_log=str(path), cache_size=0)
    await routed(http, lb, "/made")
    await routed(http, lb, "/kept", x_request_id=b"abc-123")
    made, kept = (request.header(b"x-request-id") for request in a.requests)
    assert re.fullmatch(rb"[0-9a-f]{32}", made[0]) and len(made) == 1
    assert kept == [b"abc-123"]
    lb.service.access_log.flush()
    lines = Path(path).read_text().splitlines()
    assert lines[0].endswith(" request_id=" + made[0].decode()) and "/made" in lines[0]
    assert lines[1].endswith(" request_id=abc-123") and "/kept" in lines[1]


@pytest_twisted.ensureDeferred
async def test_the_request_id_header_is_a_setting(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a], request_id_header="X-Trace", cache_size=0)
    await routed(http, lb, "/t", x_trace=b"t-1")
    (request,) = a.requests
    assert request.header(b"x-trace") == [b"t-1"] and request.header(b"x-request-id") == []


@pytest_twisted.ensureDeferred
async def test_a_route_with_cache_off_never_hits(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/nocache/x"] = origin(b"fresh", cache_control=b"max-age=60")
    a.routes[b"/cached/x"] = origin(b"stored", cache_control=b"max-age=60")
    routes = [{"path-prefix": "/nocache/", "cache": "off", "pool": "default"}, {"pool": "default"}]
    lb = start_powerlb([a], routes=routes)
    uncached = [await routed(http, lb, "/nocache/x") for _ in range(3)]
    assert [r.body for r in uncached] == [b"fresh #1", b"fresh #2", b"fresh #3"]
    assert all(r.x_cache != b"HIT" for r in uncached)
    cached = [await routed(http, lb, "/cached/x") for _ in range(2)]
    assert [(r.x_cache, r.body) for r in cached] == [(b"MISS", b"stored #1"), (b"HIT", b"stored #1")]


@pytest_twisted.ensureDeferred
async def test_metrics_count_each_route_and_each_policy(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    routes = [
        {"path-prefix": "/ok/", "pool": "default"},
        {"path-prefix": "/acl/", "allow": "10.0.0.0/8", "pool": "default"},
        {"path-prefix": "/go/", "redirect": "https://elsewhere.example.com{path}"},
        {"path-prefix": "/rl/", "rate-limit": "1/m", "rate-limit-burst": 1, "pool": "default"},
    ]
    lb = start_powerlb([a], admin=ADMIN, routes=routes)
    for target in (b"/ok/1", b"/ok/2", b"/acl/x", b"/go/x", b"/rl/1", b"/rl/2", b"/rl/3", b"/none"):
        await exchange(lb.port, raw_get(target))
    samples = await scrape(http, lb)

    def requests(route: str, pool: str) -> float:
        return samples[("powerlb_route_requests_total", (("pool", pool), ("route", route)))]

    def refusals(route: str, policy: str) -> float:
        return samples[("powerlb_policy_refusals_total", (("policy", policy), ("route", route)))]

    assert [requests(str(i), "default") for i in (0, 1, 3)] == [2, 1, 3]
    assert (refusals("1", "acl"), refusals("2", "redirect"), refusals("3", "rate-limit")) == (1, 1, 2)
    assert refusals("none", "no-route") == 1
    assert len(a.requests) == 3


def readme_example() -> Dict[str, Any]:
    """The configuration README.md's "Routes and pools" section shows."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Routes and pools\n") :]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None
    return yaml.safe_load(found.group(1))


@pytest_twisted.ensureDeferred
async def test_the_readme_example_does_what_it_says(make_backends, start_powerlb, http):
    web, api = make_backends(2)
    example = readme_example()
    del example["listen"]
    example["pools"]["web"]["backends"] = [web.url]
    example["pools"]["api"]["backends"] = [api.url]
    api.answer(b"/healthz")
    lb = start_powerlb([web], **{k.replace("-", "_"): v for k, v in example.items()})
    (moved,) = await exchange(lb.port, raw_get(b"/a?b=1", b"old.example.com"))
    status, fields, _ = headers_of(moved)
    assert (status, fields[b"location"]) == (308, b"https://www.example.com/a?b=1")
    users = await routed(http, lb, "/v1/users", b"API.example.com:8080", x_debug=b"1")
    assert (users.backend, json.loads(users.body)["uri"]) == ("b", "/users")
    assert users.header(b"x-served-by") == b"powerlb" and users.header(b"server") is None
    upstream = api.requests[-1]
    assert (upstream.header(b"x-env"), upstream.header(b"x-via"), upstream.header(b"x-debug")) == (
        [b"prod"],
        [b"powerlb"],
        [],
    )
    assert re.fullmatch(rb"[0-9a-f]{32}", upstream.header(b"x-request-id")[0])
    canary = await routed(http, lb, "/v2/x", x_canary=b"1")
    assert json.loads(canary.body) == {"backend": "b", "uri": "/canary/v2/x"}
    assert (await routed(http, lb, "/admin/x")).code == 403
    assert (await routed(http, lb, "/admin/x", x_forwarded_for=b"10.0.0.5")).code == 403  # peer untrusted
    assert (await routed(http, lb, "/anything")).backend == "a"
