"""Per-route policies, pure (sans-IO): path rewriting, header rules, redirects, IP access lists,
rate limits, the client address behind trusted proxies, request ids and the cache key.

Nothing here touches a socket or the reactor; the rate limiter reads an injected clock
(anything with ``seconds()``, like ``IReactorTime``). Header lists are powerlb's
``(lower-case name, value)`` byte pairs (:mod:`powerlb.headers`). The route these functions
take is a :class:`powerlb.routing.Route`; :mod:`powerlb.routeconfig` builds them from YAML.

Semantics, as docs/configuration.md documents them:

- **Path rewriting** (:func:`rewrite_path`): ``strip-prefix`` removes a literal leading prefix
  (the path keeps at least ``/``), then ``add-prefix`` is put in front; the query is kept.
- **Header rules** (:func:`apply_header_rules`): ``remove`` drops every field of the names, then
  ``set`` replaces every field of its names with one value, then ``add`` appends fields.
- **Redirects** (:func:`redirect_for`): the location is a template (see :data:`TEMPLATE_FIELDS`);
  a redirect whose location is the request's own URL is skipped, so
  ``https://{host}{target}`` redirects plain-http requests only.
- **Access lists** (:class:`Acl`): with an ``allow`` list, an address must be in it; then an
  address in the ``deny`` list is refused (deny wins); refused requests are answered 403.
- **Rate limits** (:class:`RateLimiter`): one token bucket per client address; a refused request
  is answered 429 with ``Retry-After``.

:func:`admit` applies the ones that may answer a request instead of its pool, in this order:
access list, redirect, rate limit.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
import re
import string
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

from powerlb.cachepolicy import primary_key
from powerlb.headers import Headers, get_all, get_first

if TYPE_CHECKING:
    from powerlb.routing import Route

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: The reasons sent with the policies' answers.
FORBIDDEN_REASON = b"client address not allowed on this route"
RATE_LIMITED_REASON = b"rate limit exceeded; retry later"

_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


def split_host(host: Optional[bytes]) -> Tuple[bytes, bytes]:
    """``(host name lower-cased, port or b"")`` of a ``Host`` value: ``Example.com:8080``,
    ``[::1]:8080``, ``example.com.`` (one trailing dot dropped); None is ``(b"", b"")``."""
    if not host:
        return b"", b""
    if host[:1] == b"[":
        end = host.find(b"]")
        if end > 0:
            rest = host[end + 1 :]
            return host[: end + 1].lower(), rest[1:] if rest[:1] == b":" else b""
    name, colon, port = host.rpartition(b":")
    if not colon or 58 in name:  # no port, or a bare IPv6 address (58: a colon, found by memchr)
        name, port = host, b""
    if name.endswith(b"."):
        name = name[:-1]
    return name.lower(), port


# -- path rewriting ------------------------------------------------------------------------------


def rewrite_path(route: Route, target: bytes) -> bytes:
    """``target`` (path and query) with the route's ``strip-prefix`` removed and ``add-prefix``
    put in front; the query is kept. A path left empty by stripping becomes ``/``."""
    strip, add = route.strip_prefix, route.add_prefix
    if strip is None and add is None:
        return target
    path, question, query = target.partition(b"?")
    if strip is not None and path.startswith(strip):
        path = path[len(strip) :]
        if not path.startswith(b"/"):
            path = b"/" + path
    if add is not None:
        path = add.rstrip(b"/") + path
    return path + question + query


# -- header rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderRules:
    """Header edits: ``remove`` names, then ``set`` (replace) and ``add`` (append) fields.

    Names are lower-case bytes, values bytes, as in :mod:`powerlb.headers`."""

    set: Tuple[Tuple[bytes, bytes], ...] = ()
    add: Tuple[Tuple[bytes, bytes], ...] = ()
    remove: Tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


def apply_header_rules(rules: HeaderRules, headers: Headers) -> Headers:
    """``headers`` edited by ``rules`` (a new list; ``headers`` itself is left alone unless
    ``rules`` is empty, when it is returned as is)."""
    if not rules:
        return headers
    drop = set(rules.remove)
    drop.update(name for name, _ in rules.set)
    out = [(name, value) for name, value in headers if name not in drop]
    out.extend(rules.set)
    out.extend(rules.add)
    return out


# -- redirects -----------------------------------------------------------------------------------

#: The fields a redirect location template may use: ``{scheme}`` (http or https), ``{host}`` (the
#: request's host name, without port), ``{port}`` (its port, empty when none was given),
#: ``{path}``, ``{query}`` (without ``?``) and ``{target}`` (path and ``?query``).
#: ``{{`` and ``}}`` are literal braces.
TEMPLATE_FIELDS = ("scheme", "host", "port", "path", "query", "target")

#: The statuses a redirect may answer with.
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Redirect:
    """A redirect: the status and the location template (see :data:`TEMPLATE_FIELDS`)."""

    location: str
    status: int = 301


def check_template(template: str) -> str:
    """``template`` if it is a valid location template, else ValueError naming the fix."""
    if not template:
        raise ValueError("an empty location; give a URL template such as https://{host}{target}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a template ({exc}); write {{{{ for a literal brace") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"{template!r} uses {{{name}}}; the fields are "
                + ", ".join("{" + field + "}" for field in TEMPLATE_FIELDS)
            )
    if any(char.isspace() for char in template):
        raise ValueError(f"{template!r} contains white space; percent-encode it (%20)")
    return template


def redirect_for(
    route: Route, scheme: bytes, host: Optional[bytes], target: bytes
) -> Optional[Tuple[int, bytes]]:
    """``(status, location)`` if ``route`` redirects this request, else None.

    ``host`` is the request's ``Host`` value (port included, if any). The redirect is skipped
    (None) when the location is the request's own URL (``scheme://host[:port]target``, default
    port left out), so ``https://{host}{target}`` redirects only plain-http requests."""
    redirect = route.redirect
    if redirect is None:
        return None
    name, port = split_host(host)
    path, _, query = target.partition(b"?")
    fields = {
        "scheme": scheme.decode("latin-1"),
        "host": name.decode("latin-1"),
        "port": port.decode("latin-1"),
        "path": path.decode("latin-1"),
        "query": query.decode("latin-1"),
        "target": target.decode("latin-1"),
    }
    location = redirect.location.format_map(fields).encode("latin-1")
    shown_port = b"" if not port or _DEFAULT_PORTS.get(scheme) == port else b":" + port
    if location == scheme + b"://" + name + shown_port + target:
        return None
    return redirect.status, location


# -- access lists and the client address --------------------------------------------------------


def parse_address(text: Union[str, bytes]) -> Optional[IPAddress]:
    """An IP address (an IPv4-mapped IPv6 one as IPv4), or None when ``text`` is not one."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


@dataclass(frozen=True)
class Acl:
    """An IP access list: with ``allow`` networks, an address must be in one of them; an
    address in a ``deny`` network is refused either way (deny wins). A client address that
    is not an IP address (a UNIX socket peer) is in no network."""

    allow: Tuple[IPNetwork, ...] = ()
    deny: Tuple[IPNetwork, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, address: Union[str, bytes]) -> bool:
        """Whether a request from ``address`` may pass (else: 403)."""
        if not self:
            return True
        parsed = parse_address(address)
        if parsed is None:
            return not self.allow
        if self.allow and not _within(parsed, self.allow):
            return False
        return not _within(parsed, self.deny)


def peer_host(address: object) -> bytes:
    """The host of a connection's peer ``address`` as the request path writes it (in
    ``X-Forwarded-For``): ``unknown`` for an address without one (a UNIX socket's)."""
    host: str = getattr(address, "host", "unknown")
    return host.encode()


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]) -> str:
    """The client's address: ``peer``, unless ``peer`` is a trusted proxy; then the
    ``X-Forwarded-For`` entries (``forwarded_for``: every value of the header, in order) are read
    from the right, skipping trusted proxies, and the first untrusted one is the client. All
    trusted: the leftmost. An entry that is not an IP address stops the walk: the trusted proxy
    that passed it on is the client."""
    client = peer
    if not trusted or not forwarded_for:
        return client
    parsed = parse_address(peer)
    if parsed is None or not _within(parsed, trusted):
        return client
    entries = [part.strip() for value in forwarded_for for part in value.split(b",")]
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return client
        client = str(address)
        if not _within(address, trusted):
            return client
    return client


# -- rate limits ---------------------------------------------------------------------------------


class Clock(Protocol):
    """What the rate limiter reads the time from (``IReactorTime`` has it)."""

    def seconds(self) -> float: ...


@dataclass(frozen=True)
class RateLimit:
    """A rate limit: ``rate`` requests per second on average, at most ``burst`` at once."""

    rate: float
    burst: int


#: Tokens short of 1 by at most this still let a request pass (float rounding in the refill).
_SLACK = 1e-9


class TokenBucket:
    """A token bucket holding up to ``burst`` tokens, refilled at ``rate`` per second;
    it starts full. Each request takes a token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 if a request at ``now`` may pass (a token is taken), else the seconds until one may."""
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0 - _SLACK:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        # Aim at half the slack, so that rounding cannot leave the bucket short after the wait.
        return (1.0 - _SLACK / 2 - self.tokens) / self.rate


def retry_after(wait: float) -> int:
    """The ``Retry-After`` seconds for a ``wait``: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


class RateLimiter:
    """Token buckets keyed by client address, on ``clock``.

    Memory is bounded: at most ``max_clients`` buckets are kept, the least recently used one
    is dropped for a new client (a dropped client starts again with a full bucket)."""

    def __init__(self, limit: RateLimit, clock: Clock, max_clients: int = 10000) -> None:
        self.limit = limit
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str) -> Optional[int]:
        """None if a request from ``client`` may pass now, else its ``Retry-After`` in seconds (>= 1)."""
        now = self.clock.seconds()
        buckets = self._buckets
        bucket = buckets.get(client)
        if bucket is None:
            bucket = buckets[client] = TokenBucket(self.limit.rate, self.limit.burst, now)
            if len(buckets) > self.max_clients:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(client)
        wait = bucket.take(now)
        return retry_after(wait) if wait else None


# -- all of them ---------------------------------------------------------------------------------


class Refusal(NamedTuple):
    """An answer a route's policy gives instead of forwarding: ``policy`` (``"acl"``,
    ``"redirect"``, ``"rate-limit"``) names it for the metrics; the body is the wiring's."""

    policy: str
    status: int
    reason: bytes
    headers: Headers


def admit(
    route: Route,
    client: str,
    limiter: Optional[RateLimiter],
    scheme: bytes,
    host: Optional[bytes],
    target: bytes,
) -> Optional[Refusal]:
    """None if the request may go to the route's pool, else the answer: 403 when the access
    list refuses ``client`` (see :func:`client_address`), the redirect (:func:`redirect_for`),
    or 429 when ``limiter`` (the route's :class:`RateLimiter`, None without ``rate-limit``)
    refuses it. A redirect is not rate limited."""
    if not route.acl.permits(client):
        return Refusal("acl", 403, FORBIDDEN_REASON, [])
    redirect = redirect_for(route, scheme, host, target)
    if redirect is not None:
        status, location = redirect
        return Refusal("redirect", status, b"", [(b"location", location)])
    if limiter is not None:
        wait = limiter.check(client)
        if wait is not None:
            return Refusal("rate-limit", 429, RATE_LIMITED_REASON, [(b"retry-after", b"%d" % wait)])
    return None


# -- request ids and cache keys ------------------------------------------------------------------


#: Fresh request ids: a random 64-bit prefix per process, then a counter (32 hex digits in all).
#: One ``os.urandom`` at start instead of one per request (a system call, and slow on PyPy).
_ID_PREFIX = os.urandom(8).hex().encode("ascii")
_ID_COUNTER = itertools.count()


def request_id(headers: Headers, name: bytes) -> bytes:
    """The request's id from header ``name`` (lower-case) when it has a non-empty one, else a
    fresh one: 32 hex digits, unique within the process and, by its random prefix, across them."""
    given = get_first(headers, name)
    if given is not None and given.strip():
        return given
    return b"%s%016x" % (_ID_PREFIX, next(_ID_COUNTER))


def cache_key(route: Route, scheme: bytes, host: bytes, target: bytes, headers: Headers) -> bytes:
    """The cache key of a request on ``route``: :func:`powerlb.cachepolicy.primary_key`, without
    the query when ``cache-key-query`` is off, followed by the values of the ``cache-key-headers``
    (so keys keep the ``scheme://host/`` prefix that purges match)."""
    if not route.cache_key_query:
        target = target.partition(b"?")[0]
    key = primary_key(scheme, host, target)
    if route.cache_key_headers:
        parts = [key]
        for name in route.cache_key_headers:
            parts.append(name + b"=" + b",".join(get_all(headers, name)))
        key = b"\n".join(parts)
    return key


_RATE = re.compile(r"\s*([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*/\s*(s|m|h)\s*")
_RATE_UNITS: Dict[str, int] = {"s": 1, "m": 60, "h": 3600}


def parse_rate(text: str) -> Tuple[float, int]:
    """``(requests per second, the count given)`` from ``"10/s"``, ``"100/m"``, ``"1000/h"``."""
    found = _RATE.fullmatch(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate; write requests per unit, e.g. 10/s, 100/m or 1000/h")
    count = float(found.group(1))
    return count / _RATE_UNITS[found.group(2)], max(1, math.ceil(count))
