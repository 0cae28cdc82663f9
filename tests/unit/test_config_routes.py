"""Tests for ``pools:`` and ``routes:`` in the configuration (powerlb.config, powerlb.routeconfig)."""

from __future__ import annotations

import ipaddress
import re
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from powerlb.config import ConfigError, build_config, config_from_mapping, config_to_mapping
from powerlb.policies import HeaderRules, RateLimit, Redirect
from powerlb.routeconfig import ROUTE_KEYS
from powerlb.routing import HeaderMatch, Route, RouteTable
from powerlb.settings import POOL_KEYS, SETTINGS

B1 = "http://127.0.0.1:9001"
B2 = "http://127.0.0.1:9002"
B3 = "http://127.0.0.1:9101"

ISSUE_EXAMPLE = textwrap.dedent(
    f"""\
    pools:
      web:
        backends: [{B1}, {B2}]
        algorithm: round-robin
      api:
        backends: [{B3}]
        algorithm: least-connections
        health-path: /healthz
    routes:
      - host: api.example.com          # exact or *.example.com; port ignored; case-insensitive
        pool: api
      - path-prefix: /static/
        pool: web
        cache: on
      - pool: web                      # no match keys: the default route
    """
)


def _config(**sections: Any) -> Dict[str, Any]:
    return {"backends": [B1], **sections}


def _error(mapping: Dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(mapping)
    return info.value


def test_issue_example() -> None:
    config = config_from_mapping(yaml.safe_load(ISSUE_EXAMPLE))
    assert list(config.pools) == ["web", "api"]
    web, api = config.pools["web"].settings, config.pools["api"].settings
    assert [b.url for b in web.backends] == [B1, B2]
    assert (api.algorithm, api.health_path) == ("least-connections", "/healthz")
    assert web.health_path is None and web.retries == config.retries  # top-level defaults
    assert [route.pool for route in config.routes] == ["api", "web", "web"]
    assert [route.index for route in config.routes] == [0, 1, 2]
    table = RouteTable(config.routes)
    assert table.match(b"GET", b"API.example.com:8080", b"/", []) is config.routes[0]
    assert table.match(b"GET", b"www.example.com", b"/static/a.css", []) is config.routes[1]
    assert table.match(b"GET", b"www.example.com", b"/", []) is config.routes[2]


def test_the_single_pool_form_is_one_default_pool_behind_one_catch_all_route(tmp_path: Path) -> None:
    config = config_from_mapping({"backends": [B1], "algorithm": "least-connections"})
    assert list(config.pools) == ["default"]
    pool = config.pools["default"]
    assert pool.name == "default" and pool.settings.backends == config.backends
    assert pool.settings.algorithm == "least-connections"
    assert config.routes == (Route(pool="default", index=0),)
    assert build_config({"backend": [B1]}).routes == config.routes


def test_pool_settings_default_to_the_top_level() -> None:
    config = config_from_mapping(
        _config(retries=3, pools={"a": {"retries": 0}, "b": None}, routes=[{"pool": "a"}])
    )
    assert config.pools["a"].settings.retries == 0
    assert config.pools["b"].settings.retries == 3
    assert config.pools["b"].settings.backends == config.backends


def test_pools_without_routes() -> None:
    only = config_from_mapping({"pools": {"web": {"backends": [B1]}}})
    assert only.routes == (Route(pool="web"),)
    with_default = config_from_mapping({"pools": {"x": {"backends": [B1]}, "default": {"backends": [B2]}}})
    assert with_default.routes == (Route(pool="default"),)
    error = _error({"pools": {"x": {"backends": [B1]}, "y": {"backends": [B2]}}})
    assert error.field == "routes"


def test_routes_name_the_implicit_default_pool() -> None:
    config = config_from_mapping(_config(routes=[{"path-prefix": "/a/", "pool": "default"}]))
    assert config.routes[0].path_prefix == b"/a/"


def test_every_route_key() -> None:
    entry = {
        "host": ["API.example.com", "*.example.org"],
        "path-prefix": "/api/",
        "path-regex": r"^/api/v[0-9]+/",
        "method": ["get", "HEAD"],
        "header": [{"name": "X-Canary", "value": 1}, {"name": "User-Agent", "regex": "(?i)bot"}],
        "pool": "default",
        "cache": False,
        "cache-key-query": "off",
        "cache-key-headers": "X-Tenant, Accept-Language",
        "strip-prefix": "/api",
        "add-prefix": "/v2",
        "request-headers": {"set": {"X-Env": "prod"}, "add": {"X-Route": "api"}, "remove": ["X-Debug"]},
        "response-headers": {"remove": "Server"},
        "redirect": "https://{host}{target}",
        "redirect-status": 308,
        "allow": ["10.0.0.0/8", "::1"],
        "deny": "10.0.0.5",
        "rate-limit": "100/m",
        "rate-limit-burst": 20,
    }
    assert sorted(entry) == sorted(ROUTE_KEYS)
    (route,) = config_from_mapping(_config(routes=[entry])).routes
    assert route.hosts == (b"api.example.com", b"*.example.org")
    assert route.path_regex is not None and route.path_regex.pattern == rb"^/api/v[0-9]+/"
    assert route.methods == frozenset({b"GET", b"HEAD"})
    assert route.headers[0] == HeaderMatch(b"x-canary", value=b"1")
    assert route.headers[1].name == b"user-agent"
    assert (route.cache, route.cache_key_query) == (False, False)
    assert route.cache_key_headers == (b"x-tenant", b"accept-language")
    assert (route.strip_prefix, route.add_prefix) == (b"/api", b"/v2")
    assert route.request_headers == HeaderRules(
        set=((b"x-env", b"prod"),), add=((b"x-route", b"api"),), remove=(b"x-debug",)
    )
    assert route.response_headers == HeaderRules(remove=(b"server",))
    assert route.redirect == Redirect("https://{host}{target}", 308)
    assert route.acl.allow == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    assert route.acl.deny == (ipaddress.ip_network("10.0.0.5"),)
    assert route.rate_limit == RateLimit(rate=100 / 60, burst=20)


def test_defaults_of_a_route() -> None:
    (route,) = config_from_mapping(_config(routes=[{"pool": "default", "rate-limit": "5/s"}])).routes
    assert route.rate_limit == RateLimit(rate=5.0, burst=5)  # the burst defaults to the count
    assert route.cache and route.cache_key_query and route.redirect is None and not route.acl


def test_redirect_only_route_needs_no_pool() -> None:
    routes = config_from_mapping(
        _config(routes=[{"host": "old.example", "redirect": "https://new.example{target}"}])
    )
    assert routes.routes[0].pool is None


@pytest.mark.parametrize(
    ("routes", "field", "fix"),
    [
        ([{"pool": "nope"}], "routes[0].pool", "unknown pool 'nope'"),
        ([{"host": "a.test"}], "routes[0].pool", "missing"),
        ([{"pool": "default", "colour": "red"}], "routes[0].colour", "unknown key 'colour'"),
        ([{"pool": "default"}, {"pool": "default"}], "routes[1]", "move the catch-all"),
        (
            [{"path-prefix": "/a", "pool": "default"}, {"pool": "default", "path-regex": "("}],
            "routes[1].path-regex",
            "regular expression",
        ),
        ([{"pool": "default", "path-prefix": "static/"}], "routes[0].path-prefix", "URL path"),
        ([{"pool": "default", "host": "a.test:80"}], "routes[0].host", "no port"),
        ([{"pool": "default", "host": "a.*.test"}], "routes[0].host", "*.example.com"),
        ([{"pool": "default", "host": []}], "routes[0].host", "no host"),
        ([{"pool": "default", "method": "GE T"}], "routes[0].method", "not a method"),
        ([{"pool": "default", "header": {"name": "X"}}], "routes[0].header", "not a header match"),
        (
            [{"pool": "default", "header": {"name": "X", "value": "a", "regex": "b"}}],
            "routes[0].header",
            "header match",
        ),
        (
            [{"pool": "default", "header": {"name": "X Y", "value": "a"}}],
            "routes[0].header",
            "not a header name",
        ),
        ([{"pool": "default", "header": {"name": "X", "regex": "("}}], "routes[0].header", "e.g. ^(1|yes)$"),
        ([{"pool": "default", "cache": "maybe"}], "routes[0].cache", "on or off"),
        (
            [{"pool": "default", "request-headers": {"replace": {}}}],
            "routes[0].request-headers",
            "header rules",
        ),
        ([{"pool": "default", "request-headers": {"set": ["X"]}}], "routes[0].request-headers", "mapping"),
        (
            [{"pool": "default", "response-headers": {"set": {"X": "a\nb"}}}],
            "routes[0].response-headers",
            "line break",
        ),
        ([{"pool": "default", "redirect": "https://{hostname}/"}], "routes[0].redirect", "{target}"),
        ([{"pool": "default", "redirect-status": 301}], "routes[0].redirect-status", "needs redirect"),
        ([{"pool": "default", "redirect": "/x", "redirect-status": 200}], "routes[0].redirect-status", "308"),
        ([{"pool": "default", "allow": "10.0.0.300"}], "routes[0].allow", "not an IP address"),
        ([{"pool": "default", "rate-limit": "fast"}], "routes[0].rate-limit", "10/s"),
        ([{"pool": "default", "rate-limit-burst": 3}], "routes[0].rate-limit-burst", "needs rate-limit"),
        (
            [{"pool": "default", "rate-limit": "1/s", "rate-limit-burst": 0}],
            "routes[0].rate-limit-burst",
            "at least 1",
        ),
        (["pool: default"], "routes[0]", "not a mapping"),
        ([], "routes", "list of routes"),
        ({"pool": "default"}, "routes", "list of routes"),
    ],
)
def test_route_errors_name_the_index_and_the_key(routes: Any, field: str, fix: str) -> None:
    error = _error(_config(routes=routes))
    assert error.field == field
    assert fix in error.problem
    assert "; " in str(error) or "missing" in error.problem  # a fix is named


@pytest.mark.parametrize(
    ("pools", "field", "fix"),
    [
        ({"web": {"listen": "tcp:1"}}, "pools.web.listen", "unknown key 'listen'"),
        ({"web": {"algorithm": "fastest"}}, "pools.web.algorithm", "unknown algorithm"),
        ({"web": {"backends": [B1, B1]}}, "pools.web.backends", "give each backend once"),
        ({"web": {"hash-key": "uri"}}, "pools.web.hash-key", "consistent-hash"),
        ({"web": {"dns": ["web.test"]}}, "pools.web.dns", "NAME:PORT"),
        ({"web": {"srv": "bad name!"}}, "pools.web.srv", ""),
        ({"web": {"dns-min-ttl": "2m", "dns-max-ttl": "1m"}}, "pools.web.dns-min-ttl", "lower dns-min-ttl"),
        ({"web web": {}}, "pools.web web", "not a pool name"),
        ({"web": ["x"]}, "pools.web", "not a mapping"),
        ({}, "pools", "not a mapping of pool names"),
        (["web"], "pools", "not a mapping of pool names"),
    ],
)
def test_pool_errors_name_the_pool_and_the_key(pools: Any, field: str, fix: str) -> None:
    error = _error(_config(pools=pools, routes=[{"pool": "web"}]))
    assert error.field == field
    assert fix in error.problem


def test_a_pool_needs_backends_from_itself_or_the_top_level() -> None:
    error = _error({"pools": {"web": {"algorithm": "round-robin"}}})
    assert error.field == "pools.web.backends"
    assert _error({}).field == "backend"


def test_each_pool_finds_its_own_backends_in_dns() -> None:
    config = config_from_mapping(
        {
            "dns-resolver": "127.0.0.1:8600",
            "dns-max-ttl": "1m",
            "pools": {
                "web": {"dns": ["web.internal:8080"]},
                "api": {"srv": "_http._tcp.api.service.consul", "dns-resolver": "10.0.0.2"},
            },
            "routes": [{"path-prefix": "/api/", "pool": "api"}, {"pool": "web"}],
        }
    )
    web, api = config.pools["web"].settings, config.pools["api"].settings
    assert (web.dns, web.srv) == ((("web.internal", 8080),), None)
    assert (api.dns, api.srv) == ((), "_http._tcp.api.service.consul")
    assert (web.dns_resolver, api.dns_resolver) == (("127.0.0.1", 8600), ("10.0.0.2", 53))
    assert web.dns_max_ttl == api.dns_max_ttl == 60.0  # the top level's
    assert config_from_mapping(config_to_mapping(config)) == config
    # The single-pool form: the top-level names are the default pool's.
    single = config_from_mapping({"dns": ["web.internal:8080"]})
    assert single.pools["default"].settings.dns == (("web.internal", 8080),)


@pytest.mark.parametrize(
    ("top", "key"),
    [({"dns": ["web.internal:8080"]}, "dns"), ({"srv": "_http._tcp.web.service.consul"}, "srv")],
)
def test_with_pools_a_top_level_dns_name_is_an_error(top: Dict[str, Any], key: str, tmp_path: Path) -> None:
    pools = {"pools": {"web": {"backends": [B1]}}}
    error = _error({**top, **pools})
    assert error.field == key
    assert f"set {key} under pools.NAME" in error.problem
    path = tmp_path / "lb.yaml"  # the option on the command line, the pools in the file
    path.write_text(yaml.safe_dump(pools))
    with pytest.raises(ConfigError, match=f"set {key} under pools.NAME"):
        build_config(top, str(path))


def test_pool_keys_are_settings_of_a_set_of_backends() -> None:
    assert {"backends", "algorithm", "hash-key", "health-path", "retries", "sticky-cookie"} <= set(POOL_KEYS)
    assert not {"listen", "workers", "cache-size", "admin", "access-log"} & set(POOL_KEYS)
    assert {setting.scope for setting in SETTINGS} == {"top", "pool"}


def test_yaml_file_with_pools_and_command_line(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(ISSUE_EXAMPLE.replace("health-path: /healthz", "retries: 0") + "retries: 2\n")
    config = build_config({"retries": "4"}, str(path))
    assert config.retries == 4
    assert config.pools["web"].settings.retries == 4  # defaults to the top level, command line included
    assert config.pools["api"].settings.retries == 0  # its own setting wins
    assert [route.pool for route in config.routes] == ["api", "web", "web"]


def test_config_with_routes_pickles() -> None:
    """Workers get the configuration pickled."""
    import pickle

    config = config_from_mapping(yaml.safe_load(ISSUE_EXAMPLE))
    assert pickle.loads(pickle.dumps(config)) == config


_names = st.from_regex(re.compile(r"[a-z]{1,8}(\.[a-z]{1,8}){0,2}"), fullmatch=True)


@given(host=_names, wildcard=st.booleans(), port=st.none() | st.integers(1, 65535), upper=st.booleans())
def test_configured_hosts_match_their_requests(host: str, wildcard: bool, port: Any, upper: bool) -> None:
    pattern = f"*.{host}" if wildcard else host
    config = config_from_mapping(_config(routes=[{"host": pattern, "pool": "default"}]))
    request = f"www.{host}" if wildcard else host
    request = request.upper() if upper else request
    if port is not None:
        request += f":{port}"
    assert RouteTable(config.routes).match(b"GET", request.encode(), b"/", []) is config.routes[0]
    assert RouteTable(config.routes).match(b"GET", b"other-" + host.encode() + b"x", b"/", []) is None


def test_config_to_mapping_writes_pools_and_routes_back() -> None:
    config = config_from_mapping(yaml.safe_load(ISSUE_EXAMPLE))
    written = config_to_mapping(config)
    assert written["pools"]["api"] == {
        "backends": [B3],
        "algorithm": "least-connections",
        "health-path": "/healthz",
    }
    assert written["routes"][0] == {"host": ["api.example.com"], "pool": "api"}
    assert config_from_mapping(written) == config
    single = config_from_mapping({"backends": [B1]})
    assert "routes" not in config_to_mapping(single) and "pools" not in config_to_mapping(single)


_route_entries = st.fixed_dictionaries(
    {"pool": st.just("default")},
    optional={
        "host": st.sampled_from(["a.test", ["*.b.test", "c.test"]]),
        "path-prefix": st.sampled_from(["/", "/api/"]),
        "path-regex": st.sampled_from([r"\.php$", "^/(a|b)/"]),
        "method": st.sampled_from(["GET", ["POST", "put"]]),
        "header": st.sampled_from([{"name": "X-K", "value": "1"}, [{"name": "x-k", "regex": "^2"}]]),
        "cache": st.booleans(),
        "cache-key-query": st.sampled_from(["on", "off"]),
        "cache-key-headers": st.sampled_from(["X-Tenant", ["a", "b"]]),
        "strip-prefix": st.just("/api"),
        "add-prefix": st.just("/v2"),
        "request-headers": st.sampled_from([{"set": {"X-A": "1"}}, {"add": {"X-B": 2}, "remove": "X-C"}]),
        "response-headers": st.sampled_from([{"remove": ["Server"]}]),
        "redirect": st.sampled_from(["https://{host}{target}", "/x"]),
        "allow": st.sampled_from(["10.0.0.0/8", ["::1", "192.168.0.0/16"]]),
        "deny": st.just("10.0.0.5"),
        "rate-limit": st.sampled_from(["10/s", "100/m", "7/h", "0.5/s", "1000/h"]),
    },
)


@given(entries=st.lists(_route_entries, min_size=1, max_size=4))
def test_routes_written_read_back_the_same(entries: list) -> None:
    mapping = {"backends": [B1], "routes": [*entries, {"pool": "default"}]}
    try:
        config = config_from_mapping(mapping)
    except ConfigError as exc:  # a catch-all in the middle
        assert "never used" in exc.problem
        return
    assert config_from_mapping(config_to_mapping(config)) == config
