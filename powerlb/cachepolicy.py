"""Pure HTTP caching policy (RFC 9111) for a shared cache: what may be stored, for how long.

Nothing here touches a socket or a clock: times are POSIX seconds passed in by
the caller. Headers follow :mod:`powerlb.headers` (lower-cased names, repeated
names kept).

This version stores only responses with explicit freshness (no heuristic
freshness, no revalidation): a response that would be stale on arrival, or
that must be revalidated before every reuse (``no-cache``), is not stored.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_tz
from typing import (
    Dict,
    FrozenSet,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from powerlb.headers import Headers, get_all, get_first, split_tokens

Directives = Dict[bytes, Optional[bytes]]

#: RFC 9111 section 1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA_SECONDS = 2147483648

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: One Cache-Control list element (RFC 9111 section 5.2): token [ "=" ( token / quoted-string ) ],
#: followed by the next comma or the end of the field line.
_DIRECTIVE = re.compile(
    rb"[ \t]*(" + _TOKEN + rb")"
    rb"(?:[ \t]*=[ \t]*(?:(" + _TOKEN + rb')|"((?:[^"\\]|\\[\s\S])*)"))?'
    rb"[ \t]*(?:,|\Z)"
)
_QUOTED_PAIR = re.compile(rb"\\([\s\S])")


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    """The directives of the ``Cache-Control`` field lines ``values``.

    Names are lower-cased; quoted-string arguments are unquoted; a directive
    without an argument maps to None; malformed list elements are skipped.
    When a directive is repeated the first occurrence wins here; RFC 9111
    section 4.2.1 lets a cache instead treat conflicting freshness directives
    as invalid, which :func:`freshness_lifetime` does (the response is stale).
    """
    return _parse(values)[0]


def _parse(values: Iterable[bytes]) -> Tuple[Directives, FrozenSet[bytes]]:
    """First-wins directives, and the names repeated with a different argument."""
    directives: Directives = {}
    conflicting: Set[bytes] = set()
    for value in values:
        pos = 0
        while pos < len(value):
            match = _DIRECTIVE.match(value, pos)
            if match is None:
                comma = value.find(b",", pos)
                pos = len(value) if comma < 0 else comma + 1
                continue
            pos = match.end()
            name, token, quoted = match.group(1, 2, 3)
            name = name.lower()
            argument = token if quoted is None else _QUOTED_PAIR.sub(rb"\1", quoted)
            if name not in directives:
                directives[name] = argument
            elif directives[name] != argument:
                conflicting.add(name)
    return directives, frozenset(conflicting)


def parse_http_date(value: Optional[bytes]) -> Optional[float]:
    """POSIX seconds of an HTTP-date (RFC 9110 section 5.6.7), or None; never raises.

    Accepts the IMF-fixdate, obsolete RFC 850 and asctime forms.
    """
    if value is None:
        return None
    try:
        parts = parsedate_tz(value.decode("latin-1"))
        if parts is None:
            return None
        moment = datetime(*parts[:6], tzinfo=timezone.utc)
        return moment.timestamp() - (parts[9] or 0)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _delta_seconds(value: Optional[bytes]) -> Optional[int]:
    """A delta-seconds value (RFC 9111 section 1.2.2), capped at 2^31; None when invalid."""
    if value is None or not value.isdigit():
        return None
    digits = value.lstrip(b"0") or b"0"
    if len(digits) > len(b"%d" % MAX_DELTA_SECONDS):
        return MAX_DELTA_SECONDS
    return min(int(digits), MAX_DELTA_SECONDS)


def _date_value(response_headers: Headers, response_time: float) -> float:
    """The response's ``Date``, or the time it was received (RFC 9110 section 6.6.1)."""
    date = parse_http_date(get_first(response_headers, b"date"))
    return response_time if date is None else date


def freshness_lifetime(response_headers: Headers, response_time: float) -> float:
    """Explicit freshness lifetime in seconds for a shared cache (RFC 9111 section 4.2.1).

    ``s-maxage`` wins over ``max-age``, which wins over ``Expires`` minus
    ``Date`` (``response_time`` when there is no valid ``Date``). Invalid
    freshness information means already stale (lifetime 0): a non-integer
    or conflicting repeated ``s-maxage``/``max-age``, an invalid ``Expires``
    or several different ``Expires`` lines. Never negative.
    """
    directives, conflicting = _parse(get_all(response_headers, b"cache-control"))
    return _lifetime(directives, conflicting, response_headers, response_time)


def _lifetime(
    directives: Directives,
    conflicting: FrozenSet[bytes],
    response_headers: Headers,
    response_time: float,
) -> float:
    for name in (b"s-maxage", b"max-age"):
        if name in directives:
            seconds = None if name in conflicting else _delta_seconds(directives[name])
            return float(seconds or 0)
    expires_lines = get_all(response_headers, b"expires")
    if not expires_lines or len(set(expires_lines)) > 1:
        return 0.0
    expires = parse_http_date(expires_lines[0])
    if expires is None:
        return 0.0
    return max(0.0, expires - _date_value(response_headers, response_time))


def corrected_initial_age(response_headers: Headers, request_time: float, response_time: float) -> float:
    """The corrected initial age of a response (RFC 9111 section 4.2.3), never negative.

    ``request_time`` is when the request was sent upstream and
    ``response_time`` when the response was received. An absent or invalid
    ``Age`` counts as 0.
    """
    age_value = _delta_seconds(get_first(response_headers, b"age")) or 0
    apparent_age = max(0.0, response_time - _date_value(response_headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def primary_key(scheme: bytes, host: bytes, target: bytes) -> bytes:
    """The cache key of a request (RFC 9111 section 2): ``scheme://host`` + target.

    Scheme and host are case-insensitive and lower-cased; the target is kept
    as is. Keys for one origin share the ``scheme://host/`` prefix, so a
    prefix purge can match them with ``startswith``.
    """
    return scheme.lower() + b"://" + host.lower() + target


def request_is_cacheable(method: bytes, request_headers: Headers) -> bool:
    """Whether a request may be answered from the cache (RFC 9111 section 4).

    Only ``GET`` and ``HEAD`` (which a stored ``GET`` response answers).
    ``request_headers`` is where request directives (``no-cache`` and so on)
    will be honoured.
    """
    return method in (b"GET", b"HEAD")


class StorePlan(NamedTuple):
    """How to store a response: freshness, corrected initial age, Vary names, arrival time."""

    freshness_lifetime: float
    initial_age: float
    vary: Tuple[bytes, ...]
    response_time: float


_AUTHORIZED_STORE_DIRECTIVES = frozenset({b"public", b"s-maxage", b"must-revalidate"})


def plan_store(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    request_time: float,
    response_time: float,
) -> Optional[StorePlan]:
    """A StorePlan when a shared cache may store this response (RFC 9111 section 3), else None.

    Not stored: a method other than ``GET``; a non-final status, ``206``
    (this version keeps no partial content) or ``304`` (it updates a stored
    response, section 4.3.4); ``no-store`` in the request (5.2.1.5) or the
    response (5.2.2.5); ``private`` (5.2.2.7); ``no-cache`` (5.2.2.4, every
    reuse would need a revalidation this version does not do); ``Set-Cookie``
    without ``public``; a request with ``Authorization`` unless the response
    has ``public``, ``s-maxage`` or ``must-revalidate`` (3.5); ``Vary: *``
    (4.1); no positive explicit freshness lifetime (4.2.1). Since freshness
    must be explicit, the default-cacheable status codes (heuristic
    freshness, 4.2.2) add nothing yet: any final status other than 206/304
    with explicit freshness is stored.
    """
    if method != b"GET" or status < 200 or status in (206, 304):
        return None
    if b"no-store" in parse_cache_control(get_all(request_headers, b"cache-control")):
        return None
    directives, conflicting = _parse(get_all(response_headers, b"cache-control"))
    if b"no-store" in directives or b"private" in directives or b"no-cache" in directives:
        return None
    if b"public" not in directives and get_first(response_headers, b"set-cookie") is not None:
        return None
    if get_first(request_headers, b"authorization") is not None and not (
        _AUTHORIZED_STORE_DIRECTIVES & directives.keys()
    ):
        return None
    vary = tuple(dict.fromkeys(t.lower() for t in split_tokens(get_all(response_headers, b"vary"))))
    if b"*" in vary:
        return None
    lifetime = _lifetime(directives, conflicting, response_headers, response_time)
    if lifetime <= 0:
        return None
    return StorePlan(
        freshness_lifetime=lifetime,
        initial_age=corrected_initial_age(response_headers, request_time, response_time),
        vary=vary,
        response_time=response_time,
    )


VaryKey = Tuple[Optional[bytes], ...]


def vary_values(vary_names: Sequence[bytes], request_headers: Headers) -> VaryKey:
    """The secondary cache key (RFC 9111 section 4.1): the request's values for ``vary_names``.

    Repeated header lines are combined and list elements re-joined with
    ``", "``, so whitespace around commas does not matter; an absent header
    is None, distinct from an empty one (``b""``).
    """
    out: List[Optional[bytes]] = []
    for name in vary_names:
        values = get_all(request_headers, name)
        out.append(b", ".join(split_tokens(values)) if values else None)
    return tuple(out)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """A stored response's current age at ``now`` (RFC 9111 section 4.2.3)."""
    return initial_age + max(0.0, now - response_time)


def format_age(age: float) -> bytes:
    """An ``Age`` field value (RFC 9111 section 5.1): whole seconds, capped at 2^31."""
    return b"%d" % int(min(max(0.0, age), MAX_DELTA_SECONDS))
