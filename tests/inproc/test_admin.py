"""The runtime API under /api/v1/ on the admin listener, over real sockets."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Optional

import pytest
import pytest_twisted
import treq

from powerlb.config import config_from_mapping
from powerlb.settings import SETTINGS
from powerlb.values import parse_admin_endpoint
from tests.support.inproc import (
    ADMIN,
    TOKEN,
    backends_hit,
    fetch,
    origin,
    reloaded,
    sleep,
    slow_route,
    wait_for,
)

JSON = b"application/json"


async def call(
    http: Any,
    lb: Any,
    method: str,
    path: str,
    body: Any = None,
    token: Optional[str] = TOKEN,
    content_type: bytes = JSON,
    raw: Optional[bytes] = None,
) -> Any:
    """``method /api/v1/<path>`` on the admin listener with ``body`` as JSON (or ``raw`` bytes);
    the response gets ``json_body``."""
    headers = {}
    if token is not None:
        headers[b"Authorization"] = [b"Bearer " + token.encode()]
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        headers[b"Content-Type"] = [content_type]
    response = await http.request(method, f"{lb.admin_url}/api/v1/{path}", data=data, headers=headers)
    response.json_body = json.loads(await response.content())
    assert response.headers.getRawHeaders(b"content-type") == [JSON]
    return response


def backend_id(backend: Any) -> str:
    return backend.url.partition("://")[2]


def start(start_powerlb: Any, backends: Any, **settings: Any) -> Any:
    """A powerlb with the admin listener and the token on, and ``settings``."""
    return start_powerlb(backends, admin=ADMIN, admin_token=TOKEN, **settings)


# --- reads ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reads_need_no_token(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start(start_powerlb, [a, b.url + ",weight=2,backup"])
    await backends_hit(http, lb.url, 3)
    stats = await call(http, lb, "GET", "stats", token=None)
    assert (stats.code, stats.json_body["requests"]) == (200, 3)
    listed = await call(http, lb, "GET", "backends", token=None)
    assert listed.code == 200
    assert [
        (x["id"], x["url"], x["state"], x["weight"], x["backup"]) for x in listed.json_body["backends"]
    ] == [
        (backend_id(a), a.url, "enabled", 1, False),
        (backend_id(b), b.url, "enabled", 2, True),
    ]
    assert listed.json_body["backends"] == stats.json_body["backends"]
    one = await call(http, lb, "GET", f"backends/{backend_id(a)}", token=None)
    assert (one.code, one.json_body["requests"], one.json_body["healthy"]) == (200, 3, True)
    # a trailing slash is fine; HEAD answers like GET without a body
    assert (await call(http, lb, "GET", "backends/", token=None)).code == 200
    head = await http.head(f"{lb.admin_url}/api/v1/stats")
    assert (head.code, await head.content()) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_unknown_paths_get_json_404_and_wrong_methods_405(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a])
    for path in ("/api", "/api/", "/api/v2/stats", "/api/v1/nope", "/api/v1/backends/x/y", "/api/v1/cache"):
        response = await http.get(lb.admin_url + path)
        assert response.code == 404, path
        assert response.headers.getRawHeaders(b"content-type") == [JSON]
        assert "the endpoints are: /api/v1/stats, /api/v1/backends" in (await response.json())["error"]
    assert (await http.get(lb.admin_url + "/_powerlb/stats")).code == 404  # moved to /api/v1/stats
    for method, path, allow in (
        ("POST", "stats", b"GET, HEAD"),
        ("DELETE", "backends", b"GET, POST, HEAD"),
        ("PUT", f"backends/{backend_id(a)}", b"GET, PATCH, DELETE, HEAD"),
        ("GET", "cache/purge", b"POST"),
        ("PATCH", "config", b"GET, HEAD"),
    ):
        response = await call(http, lb, method, path)
        assert (response.code, response.headers.getRawHeaders(b"allow")) == (405, [allow])
        assert "answers" in response.json_body["error"]


@pytest_twisted.ensureDeferred
async def test_config_is_the_effective_one_with_the_token_redacted(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start(start_powerlb, [a, b.url + ",weight=3"], cache_grace="1.5s", purge_allow="10.0.0.0/8")
    response = await call(http, lb, "GET", "config", token=None)
    config = response.json_body
    assert list(config) == [setting.key for setting in SETTINGS]
    assert config["admin-token"] == "<redacted>"
    assert TOKEN not in json.dumps(config)
    assert config["backends"] == [a.url, b.url + ",weight=3"]
    assert (config["cache-grace"], config["health-interval"], config["retries"]) == ("1.5s", "60s", 1)
    assert (config["purge-allow"], config["cache-size"], config["access-log"]) == (
        "10.0.0.0/8",
        "64MiB",
        None,
    )
    # written as a config file would be: it reads back to the running configuration
    assert config_from_mapping({**config, "admin-token": TOKEN}) == lb.service.config


# --- the token -----------------------------------------------------------------------------------


CHANGES = [
    ("POST", "backends", {"url": "http://127.0.0.1:1"}),
    ("PATCH", "backends/{id}", {"weight": 2}),
    ("PATCH", "backends/{id}", {"state": "disabled"}),
    ("DELETE", "backends/{id}", None),
    ("POST", "cache/purge", {"prefix": "http://x/"}),
]


@pytest_twisted.ensureDeferred
async def test_changes_are_off_without_a_token_and_need_the_right_one(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    off = start_powerlb([a, b], admin=ADMIN)
    on = start(start_powerlb, [a, b])
    for method, path, body in CHANGES:
        path = path.format(id=backend_id(a))
        response = await call(http, off, method, path, body)
        assert response.code == 403
        assert response.json_body == {"error": "set admin-token to enable changes through the API"}
        for token in (None, "", "wrong", TOKEN[:-1], TOKEN + "x"):
            response = await call(http, on, method, path, body, token=token)
            assert response.code == 401, (method, path, token)
            assert "Authorization: Bearer <admin-token>" in response.json_body["error"]
            assert response.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="powerlb"']
    for lb in (off, on):
        assert [(x.url, x.weight, x.state) for x in lb.service.backends] == [
            (a.url, 1, "enabled"),
            (b.url, 1, "enabled"),
        ]


# --- add and remove ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_added_backend_takes_traffic_and_shows_everywhere(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start(start_powerlb, [a, b], algorithm="weighted-round-robin")
    assert Counter(await backends_hit(http, lb.url, 4)) == {"a": 2, "b": 2}
    added = await call(http, lb, "POST", "backends", {"url": c.url, "weight": 2})
    assert added.code == 201
    assert added.headers.getRawHeaders(b"location") == [f"/api/v1/backends/{backend_id(c)}".encode()]
    assert {k: added.json_body[k] for k in ("id", "url", "weight", "state", "healthy", "requests")} == {
        "id": backend_id(c),
        "url": c.url,
        "weight": 2,
        "state": "enabled",
        "healthy": True,
        "requests": 0,
    }
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 2, "b": 2, "c": 4}
    stats = (await call(http, lb, "GET", "stats")).json_body
    assert [(x["url"], x["requests"]) for x in stats["backends"]] == [(a.url, 4), (b.url, 4), (c.url, 4)]
    metrics = await (await http.get(lb.admin_url + "/metrics")).text()
    assert f'powerlb_backend_requests_total{{backend="{c.url}",pool="default"}} 4.0' in metrics
    config = (await call(http, lb, "GET", "config")).json_body
    assert config["backends"] == [a.url, b.url, c.url + ",weight=2"]

    again = await call(http, lb, "POST", "backends", {"url": c.url + "/"})  # the same URL
    assert again.code == 409
    assert f"backend {backend_id(c)} exists" in again.json_body["error"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"url": "nonsense"}, 400, "backend: 'nonsense' is not an http:// URL"),
        ({"url": "http://127.0.0.1:1", "weight": 0}, 400, "give a whole number >= 1"),
        ({"url": "http://127.0.0.1:1", "weight": True}, 400, "backend: True is not a single value"),
        ({"url": "http://127.0.0.1:1", "backup": "yes"}, 400, "backup: 'yes'"),
        ({"url": "http://127.0.0.1:1/path"}, 400, "has a path"),
        ({"url": "http://127.0.0.1:1", "colour": "red"}, 400, "unknown key 'colour'"),
        ({"weight": 2}, 400, "has no url string"),
        ([{"url": "http://127.0.0.1:1"}], 400, "the body must be a JSON object, not list"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_new_backends_get_400(make_backends, start_powerlb, http, body, status, reason):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a])
    response = await call(http, lb, "POST", "backends", body)
    assert response.code == status
    assert reason in response.json_body["error"]
    assert "\n" not in response.json_body["error"]
    assert [x.url for x in lb.service.backends] == [a.url]


@pytest_twisted.ensureDeferred
async def test_bodies_must_be_json(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a])
    body = {"url": "http://127.0.0.1:1"}
    for content_type in (b"application/x-www-form-urlencoded", b"text/plain"):
        response = await call(http, lb, "POST", "backends", body, content_type=content_type)
        assert (response.code, response.json_body["error"]) == (
            415,
            "send the body as JSON with Content-Type: application/json",
        )
    assert (await call(http, lb, "PATCH", f"backends/{backend_id(a)}", token=TOKEN)).code == 415
    response = await call(http, lb, "POST", "backends", raw=b"{url: nope")
    assert response.code == 400
    assert response.json_body["error"].startswith("the body is not valid JSON")
    response = await call(http, lb, "POST", "backends", raw=b" " * (64 * 1024 + 1))
    assert response.code == 413
    assert (
        await call(http, lb, "POST", "backends", body, content_type=b"application/json; charset=utf-8")
    ).code == 201
    assert [x.url for x in lb.service.backends] == [a.url, "http://127.0.0.1:1"]


@pytest_twisted.ensureDeferred
async def test_removed_backend_gets_no_new_requests_and_in_flight_ones_finish(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    a.routes[b"/slow"] = slow_route(0.5)
    lb = start(start_powerlb, [a, b])
    backend_a = lb.service.backends[0]
    pool_a = lb.service.clients[backend_a]
    in_flight = treq.get(f"{lb.url}/slow", persistent=False, timeout=5)
    await wait_for(lambda: backend_a.in_flight == 1)

    removed = await call(http, lb, "DELETE", f"backends/{backend_id(a)}")
    assert (removed.code, removed.json_body) == (200, {"removed": backend_id(a)})
    assert set(await backends_hit(http, lb.url, 4)) == {"b"}
    response = await in_flight
    assert (response.code, await response.content()) == (200, b"slow")
    await wait_for(lambda: pool_a.open_connections == 0)  # its pool closed once the request ended
    assert (await call(http, lb, "GET", f"backends/{backend_id(a)}")).code == 404
    assert [x["url"] for x in (await call(http, lb, "GET", "backends")).json_body["backends"]] == [b.url]
    assert (await call(http, lb, "GET", "config")).json_body["backends"] == [b.url]

    last = await call(http, lb, "DELETE", f"backends/{backend_id(b)}")
    assert last.code == 409
    assert "is the last backend" in last.json_body["error"]
    assert set(await backends_hit(http, lb.url, 2)) == {"b"}


@pytest_twisted.ensureDeferred
async def test_a_reload_puts_back_the_configured_backends(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start(start_powerlb, [a, b], algorithm="weighted-round-robin")
    file_config = lb.service.config
    await call(http, lb, "DELETE", f"backends/{backend_id(a)}")
    await call(http, lb, "POST", "backends", {"url": c.url})
    await call(http, lb, "PATCH", f"backends/{backend_id(b)}", {"weight": 5, "state": "draining"})
    assert [spec.url + f",{spec.weight}" for spec in lb.service.config.backends] == [
        f"{b.url},5",
        f"{c.url},1",
    ]

    lb.service.reload(reloaded(lb, algorithm="weighted-round-robin", backends=[a.url, b.url]))
    assert lb.service.config.backends == file_config.backends
    assert [(x.url, x.weight, x.state) for x in lb.service.backends] == [
        (a.url, 1, "enabled"),
        (b.url, 1, "draining"),  # the operator's state outlives a reload
    ]
    assert set(await backends_hit(http, lb.url, 3)) == {"a"}


# --- weight and state ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_weight_change_shows_in_the_distribution(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start(start_powerlb, [a, b], algorithm="weighted-round-robin")
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 4, "b": 4}
    # the id is written as in the URL; an upper-case host names the same backend
    changed = await call(http, lb, "PATCH", f"backends/{backend_id(a).upper()}", {"weight": 3})
    assert (changed.code, changed.json_body["weight"], changed.json_body["effective_weight"]) == (200, 3, 3.0)
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 6, "b": 2}
    assert (await call(http, lb, "GET", "config")).json_body["backends"] == [a.url + ",weight=3", b.url]


@pytest_twisted.ensureDeferred
async def test_drain_keeps_health_checks_disable_stops_them_enable_restores(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    a.routes[b"/slow"] = b.routes[b"/slow"] = slow_route(0.5)
    lb = start(start_powerlb, [a, b], health_path="/health", health_interval="50ms")
    backend_a = lb.service.backends[0]

    def checks() -> int:
        return sum(1 for r in a.requests if r.uri == b"/health")

    async def set_state(state: str) -> Any:
        response = await call(http, lb, "PATCH", f"backends/{backend_id(a)}", {"state": state})
        assert (response.code, response.json_body["state"]) == (200, state)
        assert (response.json_body["draining"], response.json_body["disabled"]) == (
            state == "draining",
            state == "disabled",
        )
        return response

    async def slow_pair_in_flight() -> Any:
        """Two slow requests, one on each backend (round-robin), answered in 0.5 s."""
        pair = [treq.get(f"{lb.url}/slow", persistent=False, timeout=5) for _ in range(2)]
        await wait_for(lambda: backend_a.in_flight == 1)
        return pair

    async def finished(pair: Any) -> None:
        for response in pair:
            response = await response
            assert (response.code, await response.content()) == (200, b"slow")

    in_flight = await slow_pair_in_flight()
    await set_state("draining")
    assert set(await backends_hit(http, lb.url, 4)) == {"b"}
    seen = checks()
    await wait_for(lambda: checks() >= seen + 2)  # still checked while draining
    await finished(in_flight)  # in flight on a: finishes

    await set_state("enabled")
    in_flight = await slow_pair_in_flight()
    await set_state("disabled")
    assert set(await backends_hit(http, lb.url, 4)) == {"b"}
    await finished(in_flight)
    await sleep(0.2)  # a probe sent just before the change may still arrive
    seen = checks()
    await sleep(0.5)  # ten health intervals
    assert checks() == seen  # not checked while disabled
    stats = (await call(http, lb, "GET", f"backends/{backend_id(a)}")).json_body
    assert (stats["state"], stats["healthy"]) == ("disabled", True)

    await set_state("enabled")
    assert Counter(await backends_hit(http, lb.url, 4)) == {"a": 2, "b": 2}
    await wait_for(lambda: checks() >= seen + 2)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "nothing to change"),
        ({"weight": 0}, "weight: '{id}' has weight '0'; give a whole number >= 1"),
        ({"weight": 1.5}, "give a whole number >= 1"),
        ({"weight": None}, "give a whole number >= 1"),
        ({"state": "off"}, "state: 'off' is not a state; give one of: enabled, draining, disabled"),
        ({"weight": 2, "state": "off"}, "state: 'off'"),  # checked before the weight is set
        ({"weight": 2, "backup": True}, "unknown key 'backup'; give weight and/or state"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_changes_get_400_and_change_nothing(make_backends, start_powerlb, http, body, reason):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a])
    response = await call(http, lb, "PATCH", f"backends/{backend_id(a)}", body)
    assert response.code == 400
    assert reason.format(id=backend_id(a)) in response.json_body["error"]
    assert [(x.weight, x.state) for x in lb.service.backends] == [(1, "enabled")]


@pytest_twisted.ensureDeferred
async def test_unknown_or_malformed_backend_ids(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start(start_powerlb, [a, b])
    for method, body in (("GET", None), ("PATCH", {"weight": 2}), ("DELETE", None)):
        response = await call(http, lb, method, "backends/127.0.0.1:1", body)
        assert response.code == 404
        assert response.json_body["error"] == (
            f"no backend '127.0.0.1:1'; the backends are: {backend_id(a)}, {backend_id(b)}"
        )
        response = await call(http, lb, method, "backends/127.0.0.1:http", body)
        assert response.code == 400
        assert "is not a backend id; write host:port" in response.json_body["error"]
    assert [(x.weight, x.state) for x in lb.service.backends] == [(1, "enabled"), (1, "enabled")]


# --- purge ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_purge_one_url_and_a_prefix(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    for path in (b"/img/1", b"/img/2", b"/page"):
        a.routes[path] = origin(cache_control=b"max-age=60")
    lb = start(start_powerlb, [a])
    for path in ("/img/1", "/img/2", "/page"):
        await fetch(http, lb.url + path)
    one = await call(http, lb, "POST", "cache/purge", {"url": f"{lb.url}/page"})
    assert (one.code, one.json_body) == (200, {"purged": 1})
    assert (await fetch(http, lb.url + "/page")).x_cache == b"MISS"
    prefix = await call(http, lb, "POST", "cache/purge", {"prefix": f"{lb.url}/img/"})
    assert prefix.json_body == {"purged": 2}
    assert (await fetch(http, lb.url + "/img/1")).x_cache == b"MISS"
    assert (await fetch(http, lb.url + "/page")).x_cache == b"HIT"
    stats = (await call(http, lb, "GET", "stats")).json_body
    assert stats["cache"]["purged"] == 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "give exactly one of"),
        ({"url": "http://x/", "prefix": "http://x/"}, "give exactly one of"),
        ({"path": "/x"}, "give exactly one of"),
        ({"url": "/relative"}, "url: '/relative' is not an absolute URL"),
        ({"prefix": 7}, "prefix: 7 is not an absolute URL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_purges_get_400(make_backends, start_powerlb, http, body, reason):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a])
    response = await call(http, lb, "POST", "cache/purge", body)
    assert response.code == 400
    assert reason in response.json_body["error"]


@pytest_twisted.ensureDeferred
async def test_purge_with_the_cache_off(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start(start_powerlb, [a], cache_size=0)
    response = await call(http, lb, "POST", "cache/purge", {"url": "http://x/"})
    assert (response.code, response.json_body) == (404, {"error": "the cache is off (cache-size 0)"})


@pytest_twisted.ensureDeferred
async def test_admin_listener_binds_to_loopback_by_default(make_backends, start_powerlb):
    assert parse_admin_endpoint("tcp:8081") == "tcp:8081:interface=127.0.0.1"
    assert parse_admin_endpoint("tcp:8081:interface=0.0.0.0") == "tcp:8081:interface=0.0.0.0"
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0")
    assert lb.service.admin_listener.port.getHost().host == "127.0.0.1"
