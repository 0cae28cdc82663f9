"""Hash keys: which part of a request ``consistent-hash`` keeps on one backend (pure).

The ``hash-key`` setting is one of:

``client``
    the client address (the default);
``uri``
    the request target, path and query;
``host-uri``
    the request's host (lower-cased) and target: the two-tier pattern's front tier, for
    several sites behind one front (a request without a host hashes on its target alone);
``header:NAME``
    the values of request header NAME (joined by ``", "`` when repeated);
``cookie:NAME``
    the value of cookie NAME.

A request without that header or cookie (or with an empty one) is hashed on
its client address instead. :func:`key_function` turns the setting into a function of the parsed
request, which the hashing balancer calls; other algorithms never call it, so
they do not pay for it.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from powerlb.headers import TOKEN, Headers, get_cookie

#: The accepted forms, for error messages.
HASH_KEY_FORMS = "client, uri, host-uri, header:NAME or cookie:NAME"


class RoutedRequest(Protocol):
    """What balancers may read of a client request (``powerlb.proxy.ClientRequest`` is one)."""

    target: bytes
    host: Optional[bytes]
    headers: Headers
    client_host: bytes


#: A request's hash key.
KeyFunction = Callable[[RoutedRequest], bytes]


def parse_hash_key(text: str) -> str:
    """``text`` if it is a valid ``hash-key`` (see the module docstring), with ``header:`` names lower-cased.

    Raises ValueError naming the accepted forms.
    """
    kind, colon, name = text.strip().partition(":")
    kind = kind.lower()
    if not colon and kind in ("client", "uri", "host-uri"):
        return kind
    if colon and kind in ("header", "cookie"):
        if not TOKEN.fullmatch(name):
            example = "header:X-User" if kind == "header" else "cookie:sid"
            raise ValueError(f"{text!r} has no valid {kind} name after '{kind}:'; write e.g. {example}")
        return f"header:{name.lower()}" if kind == "header" else f"cookie:{name}"
    raise ValueError(f"{text!r} is not a hash key; write {HASH_KEY_FORMS}")


def client_key(request: RoutedRequest) -> bytes:
    """The client address: the ``client`` hash key, and the fallback of the others."""
    return request.client_host


def uri_key(request: RoutedRequest) -> bytes:
    """The request target (path and query): the ``uri`` hash key."""
    return request.target


def host_uri_key(request: RoutedRequest) -> bytes:
    """The host (lower-cased) and the target: the ``host-uri`` hash key. A target starts with
    ``/`` (or is ``*``), so no two host and target pairs make the same key."""
    return (request.host or b"").lower() + request.target


def key_function(hash_key: str) -> KeyFunction:
    """The function computing a request's key for ``hash_key`` (a value :func:`parse_hash_key` returned)."""
    kind, _, name = hash_key.partition(":")
    if kind == "client":
        return client_key
    if kind == "uri":
        return uri_key
    if kind == "host-uri":
        return host_uri_key
    wanted = name.encode("ascii")
    if kind == "header":

        def header_key(request: RoutedRequest) -> bytes:
            return b", ".join([v for k, v in request.headers if k == wanted]) or request.client_host

        return header_key
    if kind == "cookie":

        def cookie_key(request: RoutedRequest) -> bytes:
            return get_cookie(request.headers, wanted) or request.client_host

        return cookie_key
    raise ValueError(f"{hash_key!r} is not a hash key; write {HASH_KEY_FORMS}")
