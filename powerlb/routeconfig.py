"""The ``routes:`` keys of the configuration: :data:`ROUTE_KEYS`, one row per key with its parser
and help, and :func:`build_route`, a :class:`~powerlb.routing.Route` from one parsed entry.

Parsers take a YAML value and return the Route's value or raise ``ValueError("<problem>; <fix>")``;
:mod:`powerlb.config` names the route and key (``routes[2].path-regex``) in the ConfigError.
docs/configuration.md documents every key (tests/unit/test_config_reference.py checks it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Pattern, Tuple

from powerlb.headers import TOKEN
from powerlb.policies import (
    REDIRECT_STATUSES,
    Acl,
    HeaderRules,
    IPNetwork,
    RateLimit,
    Redirect,
    check_template,
    parse_rate,
)
from powerlb.routing import HeaderMatch, Route
from powerlb.values import as_text, parse_count, parse_header_name, parse_networks, parse_path, parse_switch

_HOST = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\]")


class RouteKeyError(ValueError):
    """A problem with route key ``key`` found across keys (:func:`build_route`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _listed(raw: Any) -> List[Any]:
    """A YAML list, or one value as a list of one (``None`` as none)."""
    if raw is None:
        return []
    return list(raw) if isinstance(raw, (list, tuple)) else [raw]


def parse_hosts(raw: Any) -> Tuple[bytes, ...]:
    """Host names (``api.example.com``) or wildcards (``*.example.com``), one or a list, lower-cased."""
    out = []
    for item in _listed(raw):
        host = as_text(item).strip().lower()
        if not _HOST.fullmatch(host):
            raise ValueError(
                f"{host!r} is not a host name; write e.g. api.example.com or *.example.com (no port)"
            )
        out.append(host.rstrip(".").encode("ascii"))
    if not out:
        raise ValueError("no host given; give a name such as api.example.com, or leave host out")
    return tuple(out)


def _path_bytes(raw: Any) -> bytes:
    return parse_path(as_text(raw)).encode("utf-8")


def _regex(raw: Any, example: str) -> Pattern[bytes]:
    text = as_text(raw)
    try:
        return re.compile(text.encode("utf-8"))
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression ({exc}); fix it, e.g. {example}") from None


def parse_path_regex(raw: Any) -> Pattern[bytes]:
    """A regular expression (Python syntax) searched in the request path."""
    return _regex(raw, "^/api/v[0-9]+/")


def parse_methods(raw: Any) -> FrozenSet[bytes]:
    """Request methods, one or a list (upper-cased): ``GET`` or ``[GET, HEAD]``."""
    out = set()
    for item in _listed(raw):
        method = as_text(item).strip().upper()
        if not TOKEN.fullmatch(method):
            raise ValueError(f"{method!r} is not a method; write e.g. GET or [GET, HEAD]")
        out.add(method.encode("ascii"))
    if not out:
        raise ValueError("no method given; write e.g. GET or [GET, HEAD], or leave method out")
    return frozenset(out)


def _header_value(raw: Any, what: str) -> bytes:
    text = as_text(raw)
    if any(char in text for char in "\r\n\0"):
        raise ValueError(f"{what} {text!r} contains a line break or NUL; remove it")
    return text.encode("latin-1")


def _name(raw: Any) -> bytes:
    return parse_header_name(as_text(raw).strip()).lower().encode("ascii")


def parse_header_matches(raw: Any) -> Tuple[HeaderMatch, ...]:
    """``{name: N, value: V}`` (exact) or ``{name: N, regex: R}`` (searched), one or a list."""
    out = []
    for item in _listed(raw):
        if (
            not isinstance(item, Mapping)
            or "name" not in item
            or len(item) != 2
            or not (set(item) <= {"name", "value", "regex"})
        ):
            raise ValueError(
                f"{item!r} is not a header match; write {{name: X-Canary, value: '1'}} or "
                "{name: X-Canary, regex: '^(1|yes)$'}"
            )
        name = _name(item["name"])
        if "value" in item:
            out.append(HeaderMatch(name, value=_header_value(item["value"], "value")))
        else:
            out.append(HeaderMatch(name, regex=_regex(item["regex"], "^(1|yes)$")))
    if not out:
        raise ValueError("no header match given; write {name: X-Canary, value: '1'}, or leave header out")
    return tuple(out)


def parse_pool_name(raw: Any) -> str:
    """A pool name: letters, digits, ``_``, ``-``, ``.``."""
    text = as_text(raw)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise ValueError(f"{text!r} is not a pool name; use letters, digits, _, - and ., e.g. web")
    return text


def _switch(raw: Any) -> bool:
    if isinstance(raw, bool):  # YAML reads on/off as booleans
        return raw
    return parse_switch(as_text(raw))


def parse_header_names(raw: Any) -> Tuple[bytes, ...]:
    """Header names, a list or comma-separated, lower-cased."""
    items = _listed(raw)
    if len(items) == 1 and isinstance(items[0], str):
        items = items[0].split(",")
    return tuple(_name(item) for item in items)


_RULE_KINDS = ("set", "add", "remove")


def parse_header_rules(raw: Any) -> HeaderRules:
    """``{set: {NAME: VALUE}, add: {NAME: VALUE}, remove: [NAME]}``, each part optional."""
    example = "{set: {X-Env: prod}, add: {Via-Route: api}, remove: [X-Debug]}"
    if not isinstance(raw, Mapping) or not set(raw) <= set(_RULE_KINDS):
        raise ValueError(f"{raw!r} is not a set of header rules; write {example}")
    pairs: Dict[str, Tuple[Tuple[bytes, bytes], ...]] = {}
    for kind in ("set", "add"):
        given = raw.get(kind) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"{kind}: {given!r} is not a mapping of header names to values; write {example}")
        pairs[kind] = tuple((_name(name), _header_value(value, "value")) for name, value in given.items())
    return HeaderRules(set=pairs["set"], add=pairs["add"], remove=parse_header_names(raw.get("remove")))


def parse_template(raw: Any) -> str:
    """A redirect location template (see :data:`powerlb.policies.TEMPLATE_FIELDS`)."""
    return check_template(as_text(raw))


def parse_redirect_status(raw: Any) -> int:
    """One of :data:`powerlb.policies.REDIRECT_STATUSES`."""
    text = as_text(raw).strip()
    if not text.isdigit() or int(text) not in REDIRECT_STATUSES:
        choices = ", ".join(map(str, REDIRECT_STATUSES))
        raise ValueError(f"{text!r} is not a redirect status; use one of {choices}")
    return int(text)


def parse_network_list(raw: Any) -> Tuple[IPNetwork, ...]:
    """Addresses or networks (CIDR), a list or comma-separated."""
    text = ",".join(as_text(item) for item in _listed(raw))
    return tuple(ipaddress.ip_network(net) for net in parse_networks(text))


def parse_burst(raw: Any) -> int:
    """The most requests a client may send at once: a whole number >= 1."""
    value = parse_count(as_text(raw))
    if value < 1:
        raise ValueError(f"{raw!r} must be at least 1; give e.g. 20")
    return value


@dataclass(frozen=True)
class RouteKey:
    """One ``routes:`` key: its YAML name, the parser and a short help text."""

    key: str
    parse: Callable[[Any], Any]
    help: str


ROUTE_KEYS: Dict[str, RouteKey] = {
    row.key: row
    for row in (
        RouteKey("host", parse_hosts, "host name or *.suffix wildcard, or a list; port ignored"),
        RouteKey("path-prefix", _path_bytes, "the path starts with this"),
        RouteKey("path-regex", parse_path_regex, "a regex found in the path"),
        RouteKey("method", parse_methods, "a method or a list"),
        RouteKey("header", parse_header_matches, "{name, value} or {name, regex}, or a list"),
        RouteKey("pool", parse_pool_name, "the pool the requests go to"),
        RouteKey("cache", _switch, "cache the route's responses: on or off"),
        RouteKey("cache-key-query", _switch, "the query is part of the cache key: on or off"),
        RouteKey("cache-key-headers", parse_header_names, "request headers whose values join the cache key"),
        RouteKey("strip-prefix", _path_bytes, "path prefix removed before forwarding"),
        RouteKey("add-prefix", _path_bytes, "path prefix added before forwarding"),
        RouteKey("request-headers", parse_header_rules, "set/add/remove rules for the request headers"),
        RouteKey("response-headers", parse_header_rules, "set/add/remove rules for the response headers"),
        RouteKey("redirect", parse_template, "answer a redirect to this location template"),
        RouteKey("redirect-status", parse_redirect_status, "the redirect's status"),
        RouteKey("allow", parse_network_list, "only these addresses or networks (else 403)"),
        RouteKey("deny", parse_network_list, "not these addresses or networks (403)"),
        RouteKey("rate-limit", parse_rate, "requests per client address, e.g. 10/s (else 429)"),
        RouteKey("rate-limit-burst", parse_burst, "requests a client may send at once"),
    )
}


def build_route(values: Mapping[str, Any], index: int) -> Route:
    """The Route at ``index`` from its parsed keys (``ROUTE_KEYS`` parsers' results, by key).

    Raises :class:`RouteKeyError` for keys that need another (``redirect-status`` without
    ``redirect``...) and for a route with neither ``pool`` nor ``redirect``."""
    for dependent, needed in (("redirect-status", "redirect"), ("rate-limit-burst", "rate-limit")):
        if dependent in values and needed not in values:
            raise RouteKeyError(dependent, f"it needs {needed}; add {needed} or leave {dependent} out")
    if "pool" not in values and "redirect" not in values:
        raise RouteKeyError("pool", "missing; name the pool this route's requests go to")
    rate_limit = None
    if "rate-limit" in values:
        rate, count = values["rate-limit"]
        rate_limit = RateLimit(rate=rate, burst=values.get("rate-limit-burst", count))
    redirect = None
    if "redirect" in values:
        redirect = Redirect(values["redirect"], values.get("redirect-status", 301))
    return Route(
        pool=values.get("pool"),
        hosts=values.get("host", ()),
        path_prefix=values.get("path-prefix"),
        path_regex=values.get("path-regex"),
        methods=values.get("method", frozenset()),
        headers=values.get("header", ()),
        cache=values.get("cache", True),
        cache_key_query=values.get("cache-key-query", True),
        cache_key_headers=values.get("cache-key-headers", ()),
        strip_prefix=values.get("strip-prefix"),
        add_prefix=values.get("add-prefix"),
        request_headers=values.get("request-headers", HeaderRules()),
        response_headers=values.get("response-headers", HeaderRules()),
        redirect=redirect,
        acl=Acl(allow=values.get("allow", ()), deny=values.get("deny", ())),
        rate_limit=rate_limit,
        index=index,
    )


def _rate_text(rate: float) -> str:
    """A rate per second as :func:`~powerlb.policies.parse_rate` reads it back: in the first
    unit (s, m, h) where it is a number of at most 6 decimals."""
    units = (("s", 1), ("m", 60), ("h", 3600))
    exact = (unit for unit in units if abs(rate * unit[1] - round(rate * unit[1], 6)) < 1e-9)
    name, seconds = next(exact, units[-1])
    return f"{round(rate * seconds, 6)!r}/{name}"


def _rules_mapping(rules: HeaderRules) -> Optional[Dict[str, Any]]:
    text = {
        "set": {name.decode(): value.decode("latin-1") for name, value in rules.set},
        "add": {name.decode(): value.decode("latin-1") for name, value in rules.add},
        "remove": [name.decode() for name in rules.remove],
    }
    return {kind: value for kind, value in text.items() if value} or None


def route_to_mapping(route: Route) -> Dict[str, Any]:
    """``route`` with the ``routes:`` keys, as a config file writes it (:func:`build_route`
    reads it back); keys at their defaults are left out."""
    headers = [
        {"name": key.name.decode(), "regex": key.regex.pattern.decode("utf-8")}
        if key.regex is not None
        else {"name": key.name.decode(), "value": (key.value or b"").decode("latin-1")}
        for key in route.headers
    ]
    redirect, limit = route.redirect, route.rate_limit
    out: Dict[str, Any] = {
        "host": [host.decode() for host in route.hosts] or None,
        "path-prefix": None if route.path_prefix is None else route.path_prefix.decode("utf-8"),
        "path-regex": None if route.path_regex is None else route.path_regex.pattern.decode("utf-8"),
        "method": sorted(method.decode() for method in route.methods) or None,
        "header": headers or None,
        "pool": route.pool,
        "cache": None if route.cache else "off",
        "cache-key-query": None if route.cache_key_query else "off",
        "cache-key-headers": [name.decode() for name in route.cache_key_headers] or None,
        "strip-prefix": None if route.strip_prefix is None else route.strip_prefix.decode("utf-8"),
        "add-prefix": None if route.add_prefix is None else route.add_prefix.decode("utf-8"),
        "request-headers": _rules_mapping(route.request_headers),
        "response-headers": _rules_mapping(route.response_headers),
        "redirect": None if redirect is None else redirect.location,
        "redirect-status": None if redirect is None or redirect.status == 301 else redirect.status,
        "allow": [str(net) for net in route.acl.allow] or None,
        "deny": [str(net) for net in route.acl.deny] or None,
        "rate-limit": None if limit is None else _rate_text(limit.rate),
        "rate-limit-burst": None if limit is None else limit.burst,
    }
    return {key: value for key, value in out.items() if value is not None}
