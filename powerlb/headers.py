"""Pure header handling: lookups, hop-by-hop stripping and the forwarding headers a proxy adds.

Headers are a list of ``(name, value)`` byte pairs with lower-cased names, in
wire order, repeated names kept (the h11 convention). Nothing here touches a
socket or a clock.
"""

from __future__ import annotations

import re
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple, TypeVar

Headers = List[Tuple[bytes, bytes]]
K = TypeVar("K")
V = TypeVar("V")


class Memo(Dict[K, V]):
    """What a pure function made of inputs that come again and again (field lines, header blocks),
    within limits: at most ``limit`` entries, after which it starts afresh (so a flood of one-off
    inputs cannot grow it, nor keep the usual ones out for long)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> None:
        """Note ``value`` for ``key``."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


class BlockMemo(Memo[bytes, V]):
    """A :class:`Memo` of header blocks that keeps a block only when it comes a second time.

    The first sight is only noted (:meth:`seen_before`), so a block that never comes again (one
    with a per-response request id, a per-request trace id) costs that note, not a shared list and
    its views, and does not push out the blocks that do come again."""

    __slots__ = ("_seen",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._seen: Memo[bytes, bool] = Memo(limit)

    def seen_before(self, block: bytes) -> bool:
        """Whether ``block`` was seen lately (it is noted as seen now)."""
        if block in self._seen:
            return True
        self._seen.remember(block, True)
        return False


#: The characters of an HTTP token (RFC 9110 section 5.6.2, ``tchar``): the one copy of the token
#: grammar, which every parser and check below derives from.
TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: The token characters as bytes (what :func:`is_token` deletes).
_TOKEN_CHARS = TCHARS.encode("ascii")
#: A token as a bytes regular expression source, for patterns built from it (e.g. Cache-Control).
TOKEN_PATTERN = b"[" + re.escape(TCHARS).encode("ascii") + b"]+"
#: An HTTP token: what header and cookie names, methods and list members are made of.
TOKEN = re.compile(TOKEN_PATTERN.decode("ascii"))

#: Hop-by-hop headers (RFC 9110 section 7.6.1) never forwarded by a proxy.
HOP_BY_HOP: FrozenSet[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
    }
)

VIA_PSEUDONYM = b"powerlb"

#: CR, LF and NUL as byte values: ``13 in value`` is one ``memchr``, ten times quicker on CPython
#: than ``b"\r" in value`` (a substring search, set up for a one-byte needle).
_CR, _LF, _NUL = 13, 10, 0


def is_token(value: bytes) -> bool:
    """Whether ``value`` is a token: one or more token characters (a header name, a method).

    Checked by deleting the token characters (``bytes.translate``, one table lookup per byte):
    on CPython three to five times quicker than a set's ``issuperset`` of a 15- to 90-byte value.
    """
    return bool(value) and not value.translate(None, _TOKEN_CHARS)


#: The longest name :data:`KNOWN_NAMES` holds (a long name is checked every time).
MAX_KNOWN_NAME_LENGTH = 64
#: Header names as sent (``Content-Type``) that :func:`token_name` found to be tokens, each with its
#: lower-case form: ``KNOWN_NAMES.get(name) or token_name(name)`` checks a name once, not per message.
KNOWN_NAMES: Memo[bytes, bytes] = Memo(10_000)


def token_name(name: bytes) -> Optional[bytes]:
    """``name`` lower-cased if it is a token (a valid header name), else None; remembered in
    :data:`KNOWN_NAMES` (within its limits)."""
    lowered = KNOWN_NAMES.get(name)
    if lowered is None and is_token(name):
        lowered = name.lower()
        if len(name) <= MAX_KNOWN_NAME_LENGTH:
            KNOWN_NAMES.remember(name, lowered)
    return lowered


#: The longest field line :data:`KNOWN_FIELDS` holds.
MAX_KNOWN_FIELD_LENGTH = 200
#: Field lines as sent (``Content-Type: text/html``), each with its header pair (the name
#: lower-cased, the value stripped of spaces and tabs) as a parser made it from a line it had
#: checked: most lines of a backend's responses, and of a client's requests, come again and again,
#: and are then split and checked once, not per message.
KNOWN_FIELDS: Memo[bytes, Tuple[bytes, bytes]] = Memo(2048)
#: Never kept in a memo (:data:`KNOWN_FIELDS`, the header block memos): a field whose name says it
#: may hold a secret (credentials, cookies, keys, tokens, sessions, signatures): nothing that comes
#: with a client's or a backend's secret stays in memory longer than its message.
_SECRET_NAME = re.compile(rb"auth|cookie|key|token|secret|session|passw|credential|signature")


def remember_field(line: bytes, header: Tuple[bytes, bytes]) -> None:
    """Note ``header`` as what the checked field ``line`` holds (within :data:`KNOWN_FIELDS`' limits)."""
    if len(line) <= MAX_KNOWN_FIELD_LENGTH and _SECRET_NAME.search(header[0]) is None:
        KNOWN_FIELDS.remember(line, header)


class SharedHeaders(List[Tuple[bytes, bytes]]):
    """The header list of a header block seen before (a :class:`BlockMemo`'s), shared by every message
    that came with the same block: read, never changed in place (a change makes a new list, as every
    function here does), and so the views worked out from it are kept on it, each worked out once.

    The views, None until first asked: ``forwarded``, a response's lines as a client gets them
    (:func:`powerlb.responses.forwarded_header_lines`); ``directives``, a response's cache
    directives (``powerlb.cachepolicy._directives``); ``forwarded_request``, a request's headers as
    sent upstream but for the client's address (:func:`forward_request_headers`), with what they
    were asked for.
    """

    __slots__ = ("directives", "forwarded", "forwarded_request")

    def __init__(self, headers: Iterable[Tuple[bytes, bytes]]) -> None:
        super().__init__(headers)
        self.forwarded: Any = None
        self.directives: Any = None
        self.forwarded_request: Any = None

    def _shared(self, *args: Any, **kwargs: Any) -> Any:
        """A change in place would reach every message with the block (and its views would be
        wrong): refused, loudly."""
        raise TypeError("shared headers are not changed in place: make a new list")

    def __reduce__(self) -> Tuple[Any, ...]:
        return SharedHeaders, (list(self),)  # (copies and pickles: made anew, not appended to)

    append = extend = insert = pop = remove = clear = sort = reverse = _shared
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _shared


#: The longest header block a :class:`BlockMemo` keeps (a longer one is parsed every time).
MAX_KNOWN_BLOCK_LENGTH = 2048


def rememberable(block: bytes, headers: Headers) -> bool:
    """Whether what the header ``block`` was parsed into (``headers``) may be kept in a :class:`BlockMemo`:
    it is not too long (:data:`MAX_KNOWN_BLOCK_LENGTH`), and has no field that may hold a secret
    (:data:`_SECRET_NAME`)."""
    return len(block) <= MAX_KNOWN_BLOCK_LENGTH and all(
        _SECRET_NAME.search(name) is None for name, _ in headers
    )


def field_value_ok(value: bytes) -> bool:
    """No CR, LF or NUL in a field value (RFC 9110 section 5.5)."""
    return _CR not in value and _LF not in value and _NUL not in value


def get_all(headers: Iterable[Tuple[bytes, bytes]], name: bytes) -> List[bytes]:
    """Every value of header ``name`` (lower-case), in order."""
    out = []
    for k, v in headers:  # a plain loop: cheaper than a comprehension before CPython 3.12
        if k == name:
            out.append(v)
    return out


def get_first(headers: Iterable[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    """The first value of header ``name`` (lower-case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def split_tokens(values: Iterable[bytes]) -> List[bytes]:
    """Comma-separated list elements of all ``values``, stripped, empties dropped."""
    out = []
    for value in values:
        for part in value.split(b","):
            part = part.strip()
            if part:
                out.append(part)
    return out


def get_cookie(headers: Iterable[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    """The value of the first cookie ``name`` (case-sensitive) in the ``Cookie`` headers, or None."""
    for k, v in headers:
        if k == b"cookie" and name in v:
            for pair in v.split(b";"):
                key, equals, value = pair.strip().partition(b"=")
                if equals and key == name:
                    return value
    return None


def strip_cookie(headers: Headers, name: bytes) -> Headers:
    """``headers`` without cookie ``name``; a ``Cookie`` header left empty is dropped."""
    if not any(k == b"cookie" and name in v for k, v in headers):
        return headers
    out = []
    for k, v in headers:
        if k == b"cookie":
            pairs = [pair.strip() for pair in v.split(b";")]
            v = b"; ".join(p for p in pairs if p and p.partition(b"=")[0] != name)
            if not v:
                continue
        out.append((k, v))
    return out


def connection_tokens(headers: Iterable[Tuple[bytes, bytes]]) -> FrozenSet[bytes]:
    """The lower-cased options of every ``Connection`` header."""
    return _options(get_all(headers, b"connection"))


def _options(values: List[bytes]) -> FrozenSet[bytes]:
    """The lower-cased options of the ``Connection`` header values ``values``."""
    if not values:
        return _NO_OPTIONS
    if len(values) == 1:
        usual = USUAL_CONNECTION_OPTIONS.get(values[0])
        if usual is not None:
            return usual
    return frozenset(t.lower() for t in split_tokens(values))


def hop_by_hop(connection: FrozenSet[bytes]) -> FrozenSet[bytes]:
    """The names a proxy drops from a message whose ``Connection`` options are ``connection``
    (:func:`connection_tokens`): :data:`HOP_BY_HOP` and those options."""
    return _and_options(HOP_BY_HOP, connection)


def _and_options(names: FrozenSet[bytes], connection: FrozenSet[bytes]) -> FrozenSet[bytes]:
    """``names`` and the ``connection`` options: ``names`` itself when they add none (no copy)."""
    return names | connection if connection and not connection <= names else names


def strip_hop_by_hop(headers: Headers) -> Headers:
    """``headers`` without hop-by-hop headers and without those ``Connection`` names."""
    drop = hop_by_hop(connection_tokens(headers))
    return [(k, v) for k, v in headers if k not in drop]


def forward_request_headers(
    headers: Headers,
    client_address: bytes,
    scheme: bytes,
    host: Optional[bytes],
    connection: Optional[FrozenSet[bytes]] = None,
    replaced: Optional[bytes] = None,
) -> Headers:
    """The headers to send upstream for a client request.

    Hop-by-hop headers and the client's framing (``Content-Length``) are
    dropped, since powerlb re-frames the body itself; ``Host`` is kept;
    ``X-Forwarded-For`` and ``Via`` are appended to, ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` set; the field named ``replaced`` (lower-case; the
    request id's), which the caller appends itself, is dropped. ``connection``
    is the request's :func:`connection_tokens` when already known (parsed
    again when None). One pass over ``headers``.
    """
    if type(headers) is SharedHeaders:
        asked = (scheme, host, connection, replaced)
        view = headers.forwarded_request
        if view is None or view[0] != asked:
            view = headers.forwarded_request = (
                asked,
                _forwarding(headers, scheme, host, connection, replaced),
            )
        kept, prior_xff, added = view[1]
    else:
        kept, prior_xff, added = _forwarding(headers, scheme, host, connection, replaced)
    return [*kept, (b"x-forwarded-for", prior_xff + client_address), *added]


def _forwarding(
    headers: Headers,
    scheme: bytes,
    host: Optional[bytes],
    connection: Optional[FrozenSet[bytes]],
    replaced: Optional[bytes],
) -> Tuple[Headers, bytes, Headers]:
    """What :func:`forward_request_headers` sends, but for the client's address: the fields kept, the
    ``X-Forwarded-For`` value the address follows (``b""`` or ending in ``", "``), the fields after it."""
    if connection is None:
        connection = connection_tokens(headers)
    dropped = _DROPPED_REQUEST_HEADERS
    if replaced is not None:
        with_replaced = _DROPPED_WITH.get(replaced)
        if with_replaced is None:
            with_replaced = _DROPPED_WITH[replaced] = _DROPPED_REQUEST_HEADERS | {replaced}
        dropped = with_replaced
    drop = _and_options(dropped, connection)
    kept = []
    prior_xff = []
    prior_via = []
    for header in headers:  # the kept fields themselves: no tuple made per field
        k = header[0]
        if k in drop:
            if k == b"x-forwarded-for":
                if header[1].strip(b" \t"):
                    prior_xff.append(header[1])
            elif k == b"via" and header[1].strip(b" \t"):
                prior_via.append(header[1])
            continue
        kept.append(header)
    added = [(b"x-forwarded-proto", scheme)]
    if host is not None:
        added.append((b"x-forwarded-host", host))
    added.append((b"via", b", ".join([*prior_via, VIA]) if prior_via else VIA))
    return kept, b"".join(value + b", " for value in prior_xff), added


def forward_response_headers(headers: Headers) -> Headers:
    """The headers to send a client for a backend response: hop-by-hop dropped, ``Via`` added.

    The backend's ``Content-Length`` is kept (as a single field) unless the
    response was also sent with ``Transfer-Encoding``, which overrides it
    (RFC 9112 section 6.3): the body the client gets is the de-chunked one.
    Hop-by-hop headers are stripped here, once on the way to the client.
    """
    connection: List[bytes] = []
    prior_via: List[bytes] = []
    lengths: List[bytes] = []
    drop_length = False
    for k, v in headers:
        if k in _RESPONSE_FIELDS_READ:
            if k == b"content-length":
                lengths.append(v)
            elif k == b"connection":
                connection.append(v)
            elif k == b"via":
                if v.strip(b" \t"):
                    prior_via.append(v)
            else:
                drop_length = True  # Transfer-Encoding
    drop = _and_options(_DROPPED_RESPONSE_HEADERS, _options(connection))
    if lengths and (drop_length or len(lengths) > 1 or not lengths[0].isdigit()):
        out = _one_content_length(headers, drop, drop_length)
    else:
        out = []
        for header in headers:  # cheaper than a comprehension on CPython 3.11, and no tuple made
            if header[0] not in drop:
                out.append(header)
    out.append((b"via", b", ".join([*prior_via, VIA]) if prior_via else VIA))
    return out


def _one_content_length(headers: Headers, drop: FrozenSet[bytes], drop_length: bool) -> Headers:
    """``headers`` without the names in ``drop``, and with the first ``Content-Length`` alone, as
    its first list member (none if ``drop_length``)."""
    out = []
    seen_length = False
    for k, v in headers:
        if k in drop:
            continue
        if k == b"content-length":
            if drop_length or seen_length:
                continue
            seen_length = True
            tokens = split_tokens([v])
            if tokens:
                v = tokens[0]
        out.append((k, v))
    return out


_REPLACED_REQUEST_HEADERS = frozenset(
    {b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
)


#: Every name a forwarded request is sent without, when its ``Connection`` names none.
_DROPPED_REQUEST_HEADERS = HOP_BY_HOP | _REPLACED_REQUEST_HEADERS
#: :data:`_DROPPED_REQUEST_HEADERS` and a ``replaced`` name (the request id's: one per configuration).
_DROPPED_WITH: Dict[bytes, FrozenSet[bytes]] = {}
#: powerlb's own ``Via`` entry.
VIA = b"1.1 " + VIA_PSEUDONYM
#: Every name a forwarded response is sent without, when its ``Connection`` names none (the
#: backend's ``Via`` is appended to instead).
_DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {b"via"}
#: The names :func:`forward_response_headers` looks at before it copies the others.
_RESPONSE_FIELDS_READ = frozenset({b"connection", b"content-length", b"transfer-encoding", b"via"})
_NO_OPTIONS: FrozenSet[bytes] = frozenset()
#: The options of the usual ``Connection`` values, made once: each names only fields that are
#: hop-by-hop anyway, or ``close``.
USUAL_CONNECTION_OPTIONS = {
    value: frozenset(t.lower() for t in split_tokens([value]))
    for value in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade")
}
