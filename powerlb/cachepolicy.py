"""Pure HTTP caching policy of a shared cache: RFC 9111, RFC 5861 and RFC 9213.

Every decision the cache makes is a function here: whether a response may be
stored and for how long (:func:`plan_store`), whether a stored one may be
reused for a request (:func:`reuse`, :func:`stale_on_error`), how to
revalidate it and update it from a ``304`` or a ``HEAD`` response
(:func:`revalidation_headers`, :func:`update_headers`, :func:`head_update`),
what to ask upstream to get a response to store (:func:`fetch_headers`), what
to answer from it (:func:`cached_answer`, :func:`answer_head`: ``Age``,
``304`` to conditional requests, ``206`` to ranges), and what an unsafe
request invalidates (:func:`invalidation_keys`).

Nothing here touches a socket or a clock: times are POSIX seconds passed in by
the caller. Headers follow :mod:`powerlb.headers` (lower-cased names, repeated
names kept).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import (
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)
from urllib.parse import urljoin, urlsplit

from powerlb.headers import (
    TOKEN_PATTERN,
    Headers,
    Memo,
    SharedHeaders,
    get_all,
    get_first,
    split_tokens,
    strip_hop_by_hop,
)
from powerlb.structured import StructuredError, parse_dictionary

Directives = Dict[bytes, Optional[bytes]]

#: RFC 9111 section 1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA_SECONDS = 2147483648

#: One Cache-Control list element (RFC 9111 section 5.2): token [ "=" ( token / quoted-string ) ],
#: followed by the next comma or the end of the field line.
_DIRECTIVE = re.compile(
    rb"[ \t]*(" + TOKEN_PATTERN + rb")"
    rb"(?:[ \t]*=[ \t]*(?:(" + TOKEN_PATTERN + rb')|"((?:[^"\\]|\\[\s\S])*)"))?'
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


#: :func:`_parse_lines` of one field line, by value (the same few values come request after
#: request); shared, so never modified. Lines longer than :data:`_MAX_REMEMBERED_LINE` are parsed
#: each time.
_PARSED_LINES: Memo[bytes, Tuple[Directives, FrozenSet[bytes]]] = Memo(1024)
_MAX_REMEMBERED_LINE = 256


def _parse_lines(lines: List[bytes]) -> Tuple[Directives, FrozenSet[bytes]]:
    """:func:`_parse` of ``lines``, remembered for a single short line: the directives are shared
    between the callers that parse the same value, which only read them."""
    if len(lines) != 1 or len(lines[0]) > _MAX_REMEMBERED_LINE:
        return _parse(lines)
    line = lines[0]
    parsed = _PARSED_LINES.get(line)
    if parsed is None:
        parsed = _parse(lines)
        _PARSED_LINES.remember(line, parsed)
    return parsed


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


_DAY = rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_MONTHS = {name: number for number, name in enumerate(_MONTH[1:-1].split(b"|"), 1)}
#: RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms, exactly.
_IMF_FIXDATE = re.compile(_DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT")
_RFC850_DATE = re.compile(
    rb"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{2})-"
    + _MONTH
    + rb"-([0-9]{2}) "
    + _TIME
    + rb" GMT"
)
_ASCTIME_DATE = re.compile(_DAY + rb" " + _MONTH + rb" ([0-9]{2}| [0-9]) " + _TIME + rb" ([0-9]{4})")


def parse_http_date(value: Optional[bytes], now: Optional[float] = None) -> Optional[float]:
    """POSIX seconds of an HTTP-date (RFC 9110 section 5.6.7), or None; never raises.

    Exactly the IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``) and the two
    obsolete forms, RFC 850 (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime
    (``Sun Nov  6 08:49:37 1994``); anything else (another zone, a one-digit
    hour, a two-digit year outside the RFC 850 form, extra spaces, ...) is
    not a date. An RFC 850 two-digit year is the one that is not more than 50
    years after ``now`` (RFC 9110 section 5.6.7); without ``now``, 70-99 are
    19xx and 00-69 20xx.
    """
    if value is None:
        return None
    imf = _IMF_FIXDATE.fullmatch(value)
    if imf is not None:
        _, day, month, year, hour, minute, second = imf.groups()
    else:
        rfc850 = _RFC850_DATE.fullmatch(value)
        if rfc850 is not None:
            _, day, month, short_year, hour, minute, second = rfc850.groups()
            year = b"%d" % _full_year(int(short_year), now)
        else:
            asctime = _ASCTIME_DATE.fullmatch(value)
            if asctime is None:
                return None
            _, month, day, hour, minute, second, year = asctime.groups()
    try:
        moment = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), min(int(second), 59))
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp()


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: 0001-01-02 and 9999-12-31 00:00 UTC: the years datetime can hold, for a ``now`` beyond them.
_FIRST_MOMENT = -62135510400.0
_LAST_MOMENT = 253402214400.0


def _full_year(short_year: int, now: Optional[float]) -> int:
    """The year of an RFC 850 date's two digits (RFC 9110 section 5.6.7)."""
    if now is None:
        return (1900 if short_year >= 70 else 2000) + short_year
    this_year = (_EPOCH + timedelta(seconds=min(max(now, _FIRST_MOMENT), _LAST_MOMENT))).year
    year = this_year - this_year % 100 + short_year
    if year > this_year + 50:
        year -= 100
    elif year <= this_year - 50:
        year += 100
    return year


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
    date = parse_http_date(get_first(response_headers, b"date"), response_time)
    return response_time if date is None else date


#: The targeted Cache-Control field meant for every CDN (RFC 9213 section 3).
CDN_CACHE_CONTROL = b"cdn-cache-control"
#: The target list powerlb obeys by default (RFC 9213 section 2.1): CDN-Cache-Control alone.
TARGETED: Tuple[bytes, ...] = (CDN_CACHE_CONTROL,)

#: Status codes heuristically cacheable by default (RFC 9110 section 15.1).
DEFAULT_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: Heuristic freshness: this fraction of the time since Last-Modified (RFC 9111 section 4.2.2) ...
HEURISTIC_FRACTION = 0.1
#: ... and never more than a day.
HEURISTIC_MAX = 86400.0

#: Methods that do not change state on the origin (RFC 9110 section 9.2.1).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def own_targeted(targets: Iterable[bytes]) -> FrozenSet[bytes]:
    """The fields of a target list that name this cache alone, which are not forwarded (RFC 9213 2.1).

    ``CDN-Cache-Control`` is meant for every CDN on the way, so it is
    forwarded: a CDN further down may obey it too.
    """
    return frozenset(targets) - {CDN_CACHE_CONTROL}


#: Directives whose value in a targeted field is an Integer (RFC 9213 section 2.1) ...
_INTEGER_DIRECTIVES = frozenset({b"max-age", b"s-maxage", b"stale-while-revalidate", b"stale-if-error"})
#: ... a Boolean ...
_BOOLEAN_DIRECTIVES = frozenset(
    {b"no-store", b"public", b"must-revalidate", b"proxy-revalidate", b"no-transform", b"immutable"}
)
#: ... or a Boolean, or field names (a String or an Inner List of them).
_QUALIFIED_DIRECTIVES = frozenset({b"no-cache", b"private"})


def targeted_directives(lines: Sequence[bytes]) -> Optional[Directives]:
    """The directives of a targeted field's lines (an RFC 8941 Dictionary, RFC 9213 section 2.1).

    None when the field is invalid and so ignored: it does not parse, is
    empty, or has a directive of the wrong type (``max-age="60"``,
    ``max-age=1.5``, ``max-age=-1``, ``no-store=1``). Integers become their
    digits, true Booleans no argument (as :func:`parse_cache_control` has
    them); a false Boolean is as if absent.
    """
    try:
        members = parse_dictionary(b", ".join(lines))
    except StructuredError:
        return None
    if not members:
        return None
    directives: Directives = {}
    for key, (value, _) in members.items():
        name = key.encode("ascii")
        if not _well_typed(name, value):
            return None
        if name in _INTEGER_DIRECTIVES:
            directives[name] = b"%d" % cast(int, value)  # _well_typed checked it
        elif value is not False:
            directives[name] = None
    return directives


def _well_typed(name: bytes, value: Any) -> bool:
    """Whether a targeted field's directive ``name`` has a value of its type (RFC 9213 section 2.1)."""
    if name in _INTEGER_DIRECTIVES:
        return type(value) is int and value >= 0
    if name in _BOOLEAN_DIRECTIVES:
        return type(value) is bool
    if name in _QUALIFIED_DIRECTIVES:
        return isinstance(value, (bool, str, list))
    return True


#: ``Cache-Control`` and the targeted fields, by the ``targets`` asked for (one per configuration).
_LOOKED_AT: Dict[Tuple[bytes, ...], FrozenSet[bytes]] = {}


def _directives(
    response_headers: Headers, targets: Tuple[bytes, ...]
) -> Tuple[Directives, FrozenSet[bytes], bool]:
    """The directives that apply: the first valid targeted field of ``targets`` (RFC 9213 section 2.1),
    else ``Cache-Control``; the conflicting names; whether they are targeted.

    :class:`~powerlb.headers.SharedHeaders` keep them (their ``directives`` view, with ``targets``):
    every response with the same header block has them at once."""
    if type(response_headers) is not SharedHeaders:
        return _find_directives(response_headers, targets)
    view = response_headers.directives
    if view is None or view[0] is not targets:
        found = _find_directives(response_headers, targets)
        response_headers.directives = (targets, found)
        return found
    return view[1]  # type: ignore[no-any-return]


def _find_directives(
    response_headers: Headers, targets: Tuple[bytes, ...]
) -> Tuple[Directives, FrozenSet[bytes], bool]:
    """:func:`_directives`, worked out."""
    lines = []
    some_targeted = False
    looked_at = _LOOKED_AT.get(targets)
    if looked_at is None:
        looked_at = _LOOKED_AT[targets] = frozenset((b"cache-control", *targets))
    for name, value in response_headers:  # one pass: most responses have no targeted field
        if name in looked_at:
            if name == b"cache-control":
                lines.append(value)
            if name in targets:
                some_targeted = True
    if some_targeted:
        for name in targets:
            targeted = get_all(response_headers, name)
            if targeted:
                directives = targeted_directives(targeted)
                if directives is not None:
                    return directives, frozenset(), True
    directives, conflicting = _parse_lines(lines)
    return directives, conflicting, False


def freshness_lifetime(
    response_headers: Headers, response_time: float, status: int = 200, targeted: Tuple[bytes, ...] = TARGETED
) -> float:
    """Freshness lifetime in seconds for a shared cache (RFC 9111 sections 4.2.1 and 4.2.2).

    ``s-maxage`` wins over ``max-age``, which wins over ``Expires`` minus
    ``Date`` (``response_time`` when there is no valid ``Date``). Invalid
    freshness information means already stale (lifetime 0): a non-integer
    or conflicting repeated ``s-maxage``/``max-age``, an invalid ``Expires``
    or several different ``Expires`` lines. Without explicit freshness, a
    heuristic lifetime (section 4.2.2) when :func:`heuristic_allowed`. Never
    negative.
    """
    directives, conflicting, is_targeted = _directives(response_headers, targeted)
    return _lifetime(directives, conflicting, is_targeted, status, response_headers, response_time)


def _lifetime(
    directives: Directives,
    conflicting: FrozenSet[bytes],
    is_targeted: bool,
    status: int,
    response_headers: Headers,
    response_time: float,
) -> float:
    for name in (b"s-maxage", b"max-age"):
        if name in directives:
            seconds = None if name in conflicting else _delta_seconds(directives[name])
            return float(seconds or 0)
    expires_lines = [] if is_targeted else get_all(response_headers, b"expires")
    if expires_lines:
        if len(set(expires_lines)) > 1:
            return 0.0
        expires = parse_http_date(expires_lines[0], response_time)
        if expires is None:
            return 0.0
        return max(0.0, expires - _date_value(response_headers, response_time))
    if not heuristic_allowed(status, directives):
        return 0.0
    last_modified = parse_http_date(get_first(response_headers, b"last-modified"), response_time)
    if last_modified is None:
        return 0.0
    since = _date_value(response_headers, response_time) - last_modified
    return min(HEURISTIC_MAX, max(0.0, since * HEURISTIC_FRACTION))


def heuristic_allowed(status: int, directives: Directives) -> bool:
    """Whether a response without explicit freshness may get a heuristic one (RFC 9111 section 4.2.2).

    Only for status codes cacheable by default, or when ``public`` is present.
    """
    return status in DEFAULT_CACHEABLE or b"public" in directives


def age_field(response_headers: Headers) -> Optional[bytes]:
    """The ``Age`` value that counts: the first member when the field is a list (``Age: 7200, 0``)."""
    members = split_tokens(get_all(response_headers, b"age"))
    return members[0] if members else None


def corrected_initial_age(response_headers: Headers, request_time: float, response_time: float) -> float:
    """The corrected initial age of a response (RFC 9111 section 4.2.3), never negative.

    ``request_time`` is when the request was sent upstream and
    ``response_time`` when the response was received. An absent or invalid
    ``Age`` counts as 0.
    """
    age_value = _delta_seconds(age_field(response_headers)) or 0
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


def url_key(url: bytes) -> Optional[bytes]:
    """The cache key of an absolute ``http``/``https`` URL (or a prefix of one), else None."""
    try:
        parts = urlsplit(url.decode("latin-1"))
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    target = parts.path + ("?" + parts.query if parts.query else "")
    return primary_key(parts.scheme.encode(), parts.netloc.encode("latin-1"), target.encode("latin-1"))


def request_is_cacheable(method: bytes, request_headers: Headers) -> bool:
    """Whether a request may be answered from the cache (RFC 9111 section 4).

    Only ``GET`` and ``HEAD`` (which a stored ``GET`` response answers).
    Request directives are :func:`reuse`'s business.
    """
    return method in (b"GET", b"HEAD")


#: Request fields that shape a hit's answer (preconditions, range) or whether a stored response
#: may answer (``Cache-Control``, ``Pragma``): a request without any is answered the same way as
#: every other such request for the same stored response, and its directives are none.
SHAPING_FIELDS = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
    }
)
#: The directives of a request without ``Cache-Control`` and ``Pragma`` (shared: never changed).
NO_DIRECTIVES: Directives = {}


def request_directives(request_headers: Headers) -> Directives:
    """The request's ``Cache-Control`` directives (RFC 9111 section 5.2.1).

    ``Pragma: no-cache`` counts as ``Cache-Control: no-cache`` when the
    request has no ``Cache-Control`` (section 5.4). The directives of a
    ``Cache-Control`` value seen before are the ones parsed then (shared):
    read them, never modify them.
    """
    lines = []
    pragma = []
    for name, value in request_headers:  # one pass for both fields
        if name == b"cache-control":
            lines.append(value)
        elif name == b"pragma":
            pragma.append(value)
    if lines:
        return _parse_lines(lines)[0]
    if pragma and any(t.lower() == b"no-cache" for t in split_tokens(pragma)):
        return {b"no-cache": None}
    return {}


class Rules(NamedTuple):
    """What a stored response's directives say about reusing it besides its freshness lifetime."""

    #: ``no-cache`` (RFC 9111 section 5.2.2.4): validate before every reuse.
    no_cache: bool = False
    #: ``must-revalidate``, ``proxy-revalidate`` or ``s-maxage`` (sections 5.2.2.2, 5.2.2.8,
    #: 5.2.2.10): never serve it stale.
    must_revalidate: bool = False
    #: RFC 5861 section 3: seconds it may be served stale while revalidated in the background.
    stale_while_revalidate: float = 0.0
    #: RFC 5861 section 4: seconds it may be served stale when revalidation fails.
    stale_if_error: float = 0.0


def _rules(directives: Directives) -> Rules:
    return Rules(
        no_cache=b"no-cache" in directives,
        must_revalidate=bool({b"must-revalidate", b"proxy-revalidate", b"s-maxage"} & directives.keys()),
        stale_while_revalidate=float(_delta_seconds(directives.get(b"stale-while-revalidate")) or 0),
        stale_if_error=float(_delta_seconds(directives.get(b"stale-if-error")) or 0),
    )


class StorePlan(NamedTuple):
    """How to store a response: freshness, corrected initial age, Vary names, arrival time, rules."""

    freshness_lifetime: float
    initial_age: float
    vary: Tuple[bytes, ...]
    response_time: float
    rules: Rules = Rules()


_AUTHORIZED_STORE_DIRECTIVES = frozenset({b"public", b"s-maxage", b"must-revalidate"})
_FRESHNESS = frozenset({b"max-age", b"s-maxage"})
_EXPLICIT = _FRESHNESS | {b"public"}


def _forbids_storing(request_headers: Headers) -> bool:
    """``no-store`` in the request (RFC 9111 section 5.2.1.5)."""
    return b"no-store" in _parse_lines(get_all(request_headers, b"cache-control"))[0]


def plan_store(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    request_time: float,
    response_time: float,
    targeted: Tuple[bytes, ...] = TARGETED,
    key: bytes = b"",
    request: Optional[Directives] = None,
) -> Optional[StorePlan]:
    """A StorePlan when a shared cache may store this response (RFC 9111 section 3), else None.

    Not stored: a method other than ``GET``, except a ``POST`` response with
    explicit freshness (``max-age``, ``s-maxage``, ``Expires``) and a
    ``Content-Location`` that is its target, the cache ``key`` (RFC 9111
    section 4, RFC 9110 section 9.3.3: it answers later ``GET`` requests);
    a non-final status, a ``206`` but one with a single ``Content-Range`` of
    known length (section 3.3: it answers the ranges it covers,
    :func:`covers`)
    (a partial response is never stored as complete) or ``304`` (it updates
    a stored response, section 4.3.4); a status not cacheable by default
    (RFC 9110 section 15.1) without explicit freshness or ``public``;
    ``no-store`` in the request (5.2.1.5) or the response (5.2.2.5);
    ``private`` (5.2.2.7); ``Set-Cookie`` without ``public``; a request with
    ``Authorization`` unless the response has ``public``, ``s-maxage`` or
    ``must-revalidate`` (3.5); ``Vary: *`` (4.1, it never matches); and a
    response that would be stale at once (no freshness, or ``no-cache``)
    without a validator to revalidate it with (4.3.1).

    ``request`` is the request's directives (:func:`request_directives`) when
    the caller has them already (else ``request_headers`` are parsed for
    ``no-store``).
    """
    if method not in (b"GET", b"POST") or status < 200 or status == 304:
        return None
    if status == 206 and (method != b"GET" or content_range(response_headers) is None):
        return None
    if (b"no-store" in request) if request is not None else _forbids_storing(request_headers):
        return None
    directives, conflicting, is_targeted = _directives(response_headers, targeted)
    if b"no-store" in directives or b"private" in directives:
        return None
    expires = not is_targeted and get_first(response_headers, b"expires") is not None
    if method == b"POST" and not (
        (expires or _FRESHNESS & directives.keys())
        and _reference_key(key, get_first(response_headers, b"content-location")) == key
    ):
        return None
    explicit = bool(_EXPLICIT & directives.keys()) or expires
    if status not in DEFAULT_CACHEABLE and not explicit:
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
    lifetime = _lifetime(directives, conflicting, is_targeted, status, response_headers, response_time)
    rules = _rules(directives)
    if (lifetime <= 0 or rules.no_cache) and not has_validator(response_headers):
        return None
    return StorePlan(
        freshness_lifetime=lifetime,
        initial_age=corrected_initial_age(response_headers, request_time, response_time),
        vary=vary,
        response_time=response_time,
        rules=rules,
    )


VaryKey = Tuple[Optional[bytes], ...]

#: Request fields whose members :func:`vary_values` normalises (case-insensitive lists of preferences).
_NORMALISED_VARY = frozenset({b"accept-language", b"accept-encoding"})
_WHITESPACE = re.compile(rb"[ \t]+")


def vary_values(vary_names: Sequence[bytes], request_headers: Headers) -> VaryKey:
    """The secondary cache key (RFC 9111 section 4.1): the request's values for ``vary_names``.

    Repeated header lines are combined and list elements re-joined with
    ``", "``, so whitespace around commas does not matter; an absent header
    is None, distinct from an empty one (``b""``). ``Accept-Language`` and
    ``Accept-Encoding`` are compared without regard to case, order,
    repetition and whitespace (``en-US;q=0.8, fr`` matches ``fr,en-us ; q=0.8``).
    """
    out: List[Optional[bytes]] = []
    for name in vary_names:
        values = get_all(request_headers, name)
        if not values:
            out.append(None)
            continue
        members = split_tokens(values)
        if name in _NORMALISED_VARY:
            members = sorted({_WHITESPACE.sub(b"", member).lower() for member in members})
        out.append(b", ".join(members))
    return tuple(out)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """A stored response's current age at ``now`` (RFC 9111 section 4.2.3)."""
    return initial_age + max(0.0, now - response_time)


def format_age(age: float) -> bytes:
    """An ``Age`` field value (RFC 9111 section 5.1): whole seconds, capped at 2^31."""
    return b"%d" % int(min(max(0.0, age), MAX_DELTA_SECONDS))


# --- reuse (RFC 9111 section 4, RFC 5861) ------------------------------------------------------

#: :func:`reuse` answers: serve it; serve it stale (the client allows it);
#: serve it stale and revalidate in the background; revalidate before use.
FRESH = "fresh"
STALE = "stale"
STALE_WHILE_REVALIDATE = "stale-while-revalidate"
REVALIDATE = "revalidate"


def _request_seconds(request: Directives, name: bytes) -> Optional[float]:
    """A request directive's delta-seconds; None when absent or invalid (then it is ignored)."""
    seconds = _delta_seconds(request.get(name))
    return None if seconds is None else float(seconds)


def reuse(lifetime: float, age: float, rules: Rules, request: Directives) -> str:
    """How a stored response of ``lifetime`` and current ``age`` may answer a request.

    ``request`` are the request's directives (:func:`request_directives`).
    RFC 9111 section 4.2: fresh while ``age < lifetime``; sections 5.2.1.4
    and 5.2.2.4 (``no-cache``), 5.2.1.1 (``max-age``) and 5.2.1.3
    (``min-fresh``) demand a revalidation; a stale response may be served
    with the client's ``max-stale`` (5.2.1.2) or within the response's
    ``stale-while-revalidate`` (RFC 5861 section 3), never when
    ``must-revalidate``/``proxy-revalidate``/``s-maxage`` forbid it (4.2.4).
    """
    if request:  # most requests have no directives
        if b"no-cache" in request:
            return REVALIDATE
        max_age = _request_seconds(request, b"max-age")
        if max_age is not None and age > max_age:
            return REVALIDATE
        min_fresh = _request_seconds(request, b"min-fresh")
        if min_fresh is not None and lifetime - age < min_fresh:
            return REVALIDATE
    if rules.no_cache:
        return REVALIDATE
    if age < lifetime:
        return FRESH
    if rules.must_revalidate:
        return REVALIDATE
    staleness = age - lifetime
    if b"max-stale" in request:
        max_stale = _request_seconds(request, b"max-stale")
        if request[b"max-stale"] is None or (max_stale is not None and staleness <= max_stale):
            return STALE
    if staleness < rules.stale_while_revalidate:
        return STALE_WHILE_REVALIDATE
    return REVALIDATE


def stale_on_error(lifetime: float, age: float, rules: Rules, request: Directives, grace: float) -> bool:
    """Whether a stored response may be served when the origin fails (RFC 5861 section 4).

    Allowed up to the largest of the response's and the request's
    ``stale-if-error`` and the configured ``grace``; never when
    ``no-cache``, ``must-revalidate``, ``proxy-revalidate`` or ``s-maxage``
    forbid serving it without validation (RFC 9111 section 4.2.4).
    """
    if rules.no_cache or rules.must_revalidate:
        return False
    allowed = max(rules.stale_if_error, grace, _request_seconds(request, b"stale-if-error") or 0.0)
    return age - lifetime <= allowed


# --- validation (RFC 9111 section 4.3, RFC 9110 section 13) ------------------------------------

#: Request fields the cache answers itself from a whole stored response (:func:`cached_answer`):
#: it asks upstream without them, since a ``304`` or ``206`` to them could not be stored.
_ANSWERED_BY_CACHE = frozenset({b"if-none-match", b"if-modified-since", b"if-range", b"range"})
#: Request fields a revalidation does without: those, and the client's other preconditions
#: (the cache's validators replace them).
_NOT_REVALIDATED = _ANSWERED_BY_CACHE | {b"if-match", b"if-unmodified-since"}


def has_validator(response_headers: Headers) -> bool:
    """Whether a response has an ``ETag`` or ``Last-Modified`` to revalidate with."""
    return any(k in (b"etag", b"last-modified") for k, _ in response_headers)


def revalidation_headers(request_headers: Headers, stored_headers: Headers) -> Headers:
    """The request headers to revalidate a stored response with (RFC 9111 section 4.3.1).

    The client's own preconditions are replaced by ``If-None-Match`` with the
    stored ``ETag`` and ``If-Modified-Since`` with its ``Last-Modified``, and
    ``Range`` is dropped: a ``200`` answer is stored whole.
    """
    out = [(k, v) for k, v in request_headers if k not in _NOT_REVALIDATED]
    etag = get_first(stored_headers, b"etag")
    if etag is not None:
        out.append((b"if-none-match", etag))
    last_modified = get_first(stored_headers, b"last-modified")
    if last_modified is not None:
        out.append((b"if-modified-since", last_modified))
    return out


def answered_by_cache(request_headers: Headers) -> bool:
    """Whether a ``GET`` sent upstream to be stored goes without the client's conditionals and range.

    True when the request has ``If-None-Match``, ``If-Modified-Since``,
    ``If-Range`` or ``Range`` and allows storing (no ``no-store``, RFC 9111
    section 5.2.1.5): a ``304`` or ``206`` to them could not be stored
    (section 3), so the cache fetches the whole response and answers them
    itself (section 4.3.2, RFC 9110 section 14).
    """
    for name, _ in request_headers:
        if name in _ANSWERED_BY_CACHE:
            return not _forbids_storing(request_headers)
    return False


def fetch_headers(request_headers: Headers, answered: Optional[bool] = None) -> Headers:
    """The request headers to fetch a response to store with: see :func:`answered_by_cache`
    (``answered``, when the caller knows it already). Without any to leave out, ``request_headers``
    themselves."""
    if not (answered_by_cache(request_headers) if answered is None else answered):
        return request_headers
    return [(k, v) for k, v in request_headers if k not in _ANSWERED_BY_CACHE]


#: :func:`head_update` answers: update the stored ``GET`` response; it is obsolete.
UPDATE = "update"
INVALIDATE = "invalidate"


def head_update(
    status: int, head_headers: Headers, stored_status: int, stored_headers: Headers, stored_length: int
) -> Optional[str]:
    """What a ``HEAD`` response does to the stored ``GET`` response that could answer it (RFC 9111 4.3.5).

    Only a ``200`` does something (else None). :data:`UPDATE` (its headers
    and freshness, as from a ``304``) when the stored response is a ``200``,
    the ``HEAD`` response has a validator, each validator it has matches the
    stored one (``ETag`` byte for byte, ``Last-Modified`` as a date), and its
    ``Content-Length``, if any, is ``stored_length``; else
    :data:`INVALIDATE`: the stored response is not the current representation.
    """
    if status != 200:
        return None
    etag = get_first(head_headers, b"etag")
    last_modified = get_first(head_headers, b"last-modified")
    if stored_status != 200 or (etag is None and last_modified is None):
        return INVALIDATE
    if etag is not None and etag != get_first(stored_headers, b"etag"):
        return INVALIDATE
    if last_modified is not None:
        date = parse_http_date(last_modified)
        if date is None or date != parse_http_date(get_first(stored_headers, b"last-modified")):
            return INVALIDATE
    lengths = split_tokens(get_all(head_headers, b"content-length"))
    if any(value != b"%d" % stored_length for value in lengths):
        return INVALIDATE
    return UPDATE


#: Fields a 304 never updates in a stored response (RFC 9111 section 3.2): framing and Age.
_NOT_UPDATED = frozenset({b"content-length", b"content-range", b"age"})


def update_headers(stored_headers: Headers, new_headers: Headers) -> Headers:
    """A stored response's headers updated from a ``304`` or ``HEAD`` response (RFC 9111 section 3.2).

    Every field of ``new_headers`` replaces the stored lines of that name,
    except hop-by-hop fields, ``Content-Length``, ``Content-Range`` and ``Age``.
    """
    new = [(k, v) for k, v in strip_hop_by_hop(new_headers) if k not in _NOT_UPDATED]
    replaced = {k for k, _ in new}
    return [(k, v) for k, v in stored_headers if k not in replaced] + new


def _opaque_tags(value: bytes) -> List[bytes]:
    """The entity-tags of an ``If-None-Match`` value, weak prefix removed (RFC 9110 section 8.8.3.2)."""
    return [t[2:] if t.startswith(b"W/") else t for t in split_tokens([value])]


def not_modified(request_headers: Headers, stored_headers: Headers) -> bool:
    """Whether a conditional GET/HEAD is answered ``304`` by a stored response (RFC 9111 section 4.3.2).

    ``If-None-Match`` (weak comparison, RFC 9110 section 13.1.2) wins over
    ``If-Modified-Since`` (section 13.1.3), which compares against the stored
    ``Last-Modified``, or its ``Date`` when it has none.
    """
    if_none_match = get_all(request_headers, b"if-none-match")
    if if_none_match:
        etag = get_first(stored_headers, b"etag")
        tags = [t for line in if_none_match for t in _opaque_tags(line)]
        return b"*" in tags or (etag is not None and etag.removeprefix(b"W/") in tags)
    since = parse_http_date(get_first(request_headers, b"if-modified-since"))
    if since is None:
        return False
    modified = parse_http_date(get_first(stored_headers, b"last-modified")) or parse_http_date(
        get_first(stored_headers, b"date")
    )
    return modified is not None and modified <= since


# --- answers from the cache ---------------------------------------------------------------------

#: :func:`byte_range` for a Range no byte of the representation satisfies.
UNSATISFIABLE = (-1, -1)

_BYTE_RANGE = re.compile(rb"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*\Z", re.IGNORECASE)


_CONTENT_RANGE = re.compile(rb"bytes ([0-9]{1,15})-([0-9]{1,15})/([0-9]{1,15})")


def content_range(headers: Headers) -> Optional[Tuple[int, int, int]]:
    """(first, last, complete length) of a partial response's single byte ``Content-Range``, else None."""
    values = get_all(headers, b"content-range")
    match = _CONTENT_RANGE.fullmatch(values[0]) if len(values) == 1 else None
    if match is None:
        return None
    first, last, complete = (int(group) for group in match.groups())
    return (first, last, complete) if first <= last < complete else None


def covered_span(request_headers: Headers, stored_headers: Headers) -> Optional[Tuple[int, int]]:
    """The (first, last) bytes a request's single ``Range`` asks of a stored ``206``, when it holds
    them all (RFC 9111 section 3.3), else None."""
    stored = content_range(stored_headers)
    if stored is None:
        return None
    start, end, complete = stored
    span = byte_range(request_headers, stored_headers, complete)
    if span is None or span == UNSATISFIABLE or not start <= span[0] <= span[1] <= end:
        return None
    return span


def covers(method: bytes, request_headers: Headers, status: int, stored_headers: Headers) -> bool:
    """Whether a stored response of ``status`` can answer the request at all.

    A complete response can; a stored ``206`` only a ``GET`` without
    ``If-None-Match``/``If-Modified-Since`` for a range within it
    (RFC 9111 section 3.3); the rest goes upstream.
    """
    if status != 206:
        return True
    return (
        method == b"GET"
        and get_first(request_headers, b"if-none-match") is None
        and get_first(request_headers, b"if-modified-since") is None
        and covered_span(request_headers, stored_headers) is not None
    )


def byte_range(request_headers: Headers, stored_headers: Headers, length: int) -> Optional[Tuple[int, int]]:
    """The single byte range (first, last) to answer a ``Range`` request with (RFC 9110 section 14).

    None means "send the whole representation": no ``Range``, several
    ranges, another unit, a malformed one, or an ``If-Range`` that does not
    match strongly (section 13.1.5). :data:`UNSATISFIABLE` when no byte of
    ``length`` is in the range.
    """
    value = get_first(request_headers, b"range")
    if value is None:
        return None
    if_range = get_first(request_headers, b"if-range")
    if if_range is not None and not _if_range_matches(if_range, stored_headers):
        return None
    match = _BYTE_RANGE.match(value)
    if match is None or match.group(1) == match.group(2) == b"":
        return None
    first, last = match.group(1, 2)
    if first == b"":
        suffix = int(last)
        return UNSATISFIABLE if suffix == 0 or length == 0 else (max(0, length - suffix), length - 1)
    start = int(first)
    if last != b"" and int(last) < start:
        return None
    if start >= length:
        return UNSATISFIABLE
    return (start, length - 1 if last == b"" else min(int(last), length - 1))


def _if_range_matches(if_range: bytes, stored_headers: Headers) -> bool:
    """RFC 9110 section 13.1.5: a strong ETag match, or the exact Last-Modified date."""
    if if_range.startswith((b'"', b"W/")):
        etag = get_first(stored_headers, b"etag")
        return etag is not None and not etag.startswith(b"W/") and etag == if_range
    date = parse_http_date(if_range)
    return date is not None and date == parse_http_date(get_first(stored_headers, b"last-modified"))


class Answer(NamedTuple):
    """A response made from a stored one: status, reason, headers (with Age), body."""

    status: int
    reason: bytes
    headers: Headers
    body: bytes


#: The fields a 304 carries (RFC 9110 section 15.4.5), plus Last-Modified and Age.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified", b"age"}
)


#: Stored fields an answer replaces with its own: its framing and Age.
_NOT_ANSWERED = frozenset({b"content-length", b"age"})

#: :func:`answer_head`'s span for an answer without a body (``304``, ``416``): an empty slice.
NO_BODY = (0, -1)


def answer_head(
    method: bytes,
    request_headers: Headers,
    status: int,
    reason: bytes,
    stored_headers: Headers,
    length: Optional[int],
    age: float,
    strip: FrozenSet[bytes] = frozenset(),
) -> Tuple[Answer, Optional[Tuple[int, int]]]:
    """The head of the answer to a request from a response of ``length`` body bytes, and its body's span.

    The answer (with an empty body) has the response's headers with ``Age``
    (RFC 9111 section 5.1), without the fields in ``strip`` (the targeted fields
    for this cache alone, :func:`own_targeted`) and with a
    ``Content-Length`` of what follows; it is a ``304`` when the client's
    precondition says it has the response (RFC 9111 section 4.3.2), a ``206``
    or ``416`` to a single-range ``GET`` of a ``200`` (RFC 9110 section 14),
    and a ``206`` of the requested range from a stored ``206`` that covers it.
    The span is the (first, last) body bytes to send, :data:`NO_BODY` for
    none, or None for the whole body. With ``length`` None (not known yet)
    no ``Range`` is answered and there is no ``Content-Length``.
    """
    headers = [(k, v) for k, v in stored_headers if k not in _NOT_ANSWERED and k not in strip]
    headers.append((b"age", format_age(age)))
    if status == 200 and not_modified(request_headers, stored_headers):
        headers = [(k, v) for k, v in headers if k in _NOT_MODIFIED_FIELDS]
        return Answer(304, b"Not Modified", headers, b""), NO_BODY
    if status == 206:
        return _partial_answer(request_headers, reason, stored_headers, headers, length)
    if status == 200 and method == b"GET" and length is not None:
        span = byte_range(request_headers, stored_headers, length)
        if span == UNSATISFIABLE:
            headers.append((b"content-range", b"bytes */%d" % length))
            headers.append((b"content-length", b"0"))
            return Answer(416, b"Range Not Satisfiable", headers, b""), NO_BODY
        if span is not None:
            first, last = span
            headers.append((b"content-range", b"bytes %d-%d/%d" % (first, last, length)))
            headers.append((b"content-length", b"%d" % (last - first + 1)))
            return Answer(206, b"Partial Content", headers, b""), span
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return Answer(status, reason, headers, b""), None


def _partial_answer(
    request_headers: Headers, reason: bytes, stored_headers: Headers, headers: Headers, length: Optional[int]
) -> Tuple[Answer, Optional[Tuple[int, int]]]:
    """:func:`answer_head` for a stored ``206``: the covered range (:func:`covers`), else the whole part."""
    span = covered_span(request_headers, stored_headers)
    stored = content_range(stored_headers)
    if span is None or stored is None:
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        return Answer(206, reason, headers, b""), None
    (first, last), (start, _, complete) = span, stored
    headers = [(k, v) for k, v in headers if k != b"content-range"]
    headers.append((b"content-range", b"bytes %d-%d/%d" % (first, last, complete)))
    headers.append((b"content-length", b"%d" % (last - first + 1)))
    return Answer(206, reason, headers, b""), (first - start, last - start)


def cached_answer(
    method: bytes,
    request_headers: Headers,
    status: int,
    reason: bytes,
    stored_headers: Headers,
    body: bytes,
    age: float,
    strip: FrozenSet[bytes] = frozenset(),
) -> Answer:
    """What to send for a request answered by a stored response of current ``age``: :func:`answer_head`
    with the stored ``body`` (or the requested part of it)."""
    answer, span = answer_head(method, request_headers, status, reason, stored_headers, len(body), age, strip)
    return answer._replace(body=body if span is None else body[span[0] : span[1] + 1])


# --- invalidation (RFC 9111 section 4.4) --------------------------------------------------------


def invalidation_keys(
    method: bytes, status: int, scheme: bytes, host: bytes, target: bytes, response_headers: Headers
) -> List[bytes]:
    """The keys a response to an unsafe request invalidates (RFC 9111 section 4.4).

    A non-error response (2xx, 3xx) to a method that is not safe invalidates
    the target URI and the ``Location`` and ``Content-Location`` URIs when
    they have the same origin; anything else invalidates nothing.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    own = primary_key(scheme, host, target)
    keys = [own]
    origin = own[: len(own) - len(target)]
    for name in (b"location", b"content-location"):
        key = _reference_key(own, get_first(response_headers, name))
        if key is not None and key.startswith(origin + b"/") and key not in keys:
            keys.append(key)
    return keys


def _reference_key(own: bytes, reference: Optional[bytes]) -> Optional[bytes]:
    """The cache key of a URI ``reference`` resolved against the key ``own`` (RFC 3986 section 5)."""
    if reference is None:
        return None
    return url_key(urljoin(own.decode("latin-1"), reference.decode("latin-1")).encode("latin-1"))
