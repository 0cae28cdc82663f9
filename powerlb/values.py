"""The value grammar of powerlb's settings: each parser takes text and returns a value or
raises ``ValueError("<what is wrong>; <the fix>")``, each formatter spells a value the way
its parser reads it back.

Pure: nothing here imports ``twisted.internet.reactor`` (twistd installs the reactor
only after option parsing), so endpoint strings are checked against a placeholder reactor.
:mod:`powerlb.settings` names a parser for every setting; :mod:`powerlb.config` turns
the ``ValueError`` into a :class:`~powerlb.config.ConfigError` naming the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString

from powerlb.backend import BackendSpec
from powerlb.balancing import ALGORITHMS
from powerlb.headers import TOKEN
from powerlb.tls import TLS_EXTRA_HINT, load_ca_file, tls_available

_NUMBER = re.compile(r"\s*([+-]?)([0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})\s*([A-Za-z]*)\s*")

_SIZE_UNITS: Dict[str, int] = {"B": 1}
_SIZE_UNITS.update(
    (name, 1024**power)
    for power, prefix in enumerate("KMG", start=1)
    for name in (prefix, prefix + "B", prefix + "iB")
)
_DURATION_UNITS: Dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}


def _parse_quantity(
    text: str, units: Mapping[str, Union[int, Fraction]], what: str, example: str
) -> Fraction:
    """A non-negative number with an optional case-insensitive unit, as an exact Fraction."""
    found = _NUMBER.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a {what}; give a {what} such as {example}")
    sign, number, unit = found.groups()
    if sign == "-":
        raise ValueError(f"{text!r} is negative; give a {what} such as {example}")
    factors = {name.lower(): factor for name, factor in units.items()}
    if unit and unit.lower() not in factors:
        raise ValueError(
            f"{text!r} has unknown unit {unit!r}; use one of: {', '.join(units)} (e.g. {example})"
        )
    return Fraction(number) * factors.get(unit.lower(), 1)


def parse_size(text: str) -> int:
    """Bytes from ``"65536"``, ``"64K"``, ``"1.5MiB"``, ``"2GB"``... (all units are 1024-based)."""
    return int(_parse_quantity(text, _SIZE_UNITS, "size", "64MiB"))


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size`` bytes that :func:`parse_size` reads back."""
    for unit in ("GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_duration(text: str) -> float:
    """Seconds from ``"2"``, ``"2.5"``, ``"2s"``, ``"500ms"``, ``"1m"`` or ``"1h"``."""
    return float(_parse_quantity(text, _DURATION_UNITS, "duration", "2s or 500ms"))


def _format_number(value: float) -> str:
    """``value`` in positional notation, exactly (``0.5``, ``1.123456``, ``2``)."""
    return format(Decimal(repr(value)).normalize(), "f")


def format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it back (``"0.5s"``)."""
    return _format_number(seconds) + "s"


def parse_count(text: str) -> int:
    """A whole number >= 0 (``"3"``)."""
    if re.fullmatch(r"\s*[+-]?[0-9]{1,18}\s*", text) is None:
        raise ValueError(f"{text!r} is not a whole number; give a number such as 3")
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative; give a number such as 3")
    return value


def above_zero(parse: Callable[[str], Any], example: str) -> Callable[[str], Any]:
    """``parse``, also rejecting zero."""

    def parse_positive(text: str) -> Any:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"{text!r} must be more than zero; give e.g. {example}")
        return value

    return parse_positive


_BACKEND_SYNTAX = "write http://HOST:PORT[,weight=N][,backup] (https:// for TLS)"

#: The port of a backend URL without one, by scheme.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_backend(text: str) -> BackendSpec:
    """A backend from ``"http[s]://HOST[:PORT][,weight=N][,backup]"`` (port 80 or 443, weight 1, primary).

    A backup backend takes traffic only while no primary backend is healthy.
    An ``https://`` backend is reached over TLS with its certificate verified.
    """
    url, *options = text.strip().split(",")
    scheme = url.partition("://")[0].lower()
    if scheme not in _DEFAULT_PORTS or "://" not in url:
        raise ValueError(f"{text!r} is not an http:// URL; {_BACKEND_SYNTAX}")
    if scheme == "https" and not tls_available():
        raise ValueError(f"{text!r} is an https backend, which needs TLS support; {TLS_EXTRA_HINT}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # bad or out-of-range port, or a malformed [IPv6] host
        raise ValueError(f"{text!r} has a bad address ({exc}); {_BACKEND_SYNTAX}") from None
    if not host:
        raise ValueError(f"{text!r} has no host; {_BACKEND_SYNTAX}")
    if port == 0:
        raise ValueError(f"{text!r} has port 0; give the port the backend listens on")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} contains credentials, which are not supported; remove 'user@'")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a path; backends take no path, {_BACKEND_SYNTAX}")
    weight = None
    backup = False
    for option in options:
        name, equals, value = option.partition("=")
        name = name.strip()
        if name == "backup" and not equals:
            backup = True
            continue
        if name != "weight" or not equals:
            raise ValueError(
                f"{text!r} has unknown option {option.strip()!r}; the options are ,weight=N and ,backup"
            )
        if weight is not None:
            raise ValueError(f"{text!r} gives the weight twice; give ,weight=N once")
        weight = parse_weight(value, text)
    shown = f"[{host}]" if ":" in host else host
    port = _DEFAULT_PORTS[scheme] if port is None else port
    return BackendSpec(
        url=f"{scheme}://{shown}:{port}",
        host=host,
        port=port,
        weight=weight or 1,
        backup=backup,
        scheme=scheme,
    )


def format_backend(spec: BackendSpec) -> str:
    """A backend as a config file writes it: ``http://HOST:PORT[,weight=N][,backup]``."""
    weight = f",weight={spec.weight}" if spec.weight != 1 else ""
    return spec.url + weight + (",backup" if spec.backup else "")


def parse_weight(value: str, text: str) -> int:
    """A backend weight: a whole number >= 1 (``text`` names it in the error)."""
    if re.fullmatch(r"\s*[+-]?[0-9]{1,9}\s*", value) is None or int(value) < 1:
        raise ValueError(f"{text!r} has weight {value.strip()!r}; give a whole number >= 1")
    return int(value)


def as_text(raw: Any) -> str:
    """A YAML scalar as the text a parser reads (numbers are spelled out)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    raise ValueError(f"{raw!r} is not a single value; give text or a number")


def parse_backend_entry(entry: Any) -> BackendSpec:
    """A backend from a string (see :func:`parse_backend`) or a ``{url:, weight:, backup:}`` mapping."""
    if isinstance(entry, str):
        return parse_backend(entry)
    if not isinstance(entry, Mapping):
        raise ValueError(f"{entry!r} is not a backend; {_BACKEND_SYNTAX} or {{url: ..., weight: N}}")
    unknown = sorted(str(key) for key in entry if key not in ("url", "weight", "backup"))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in {entry!r}; valid keys: url, weight, backup")
    url = entry.get("url")
    if not isinstance(url, str):
        raise ValueError(f"{entry!r} has no url string; give url: http://HOST:PORT")
    options = [url]
    if "weight" in entry:
        options.append(f"weight={as_text(entry['weight'])}")
    backup = entry.get("backup", False)
    if not isinstance(backup, bool):
        raise ValueError(f"backup: {backup!r} in {entry!r} is not true or false")
    if backup:
        options.append("backup")
    return parse_backend(",".join(options))


def parse_algorithm(text: str) -> str:
    """One of the load-balancing algorithms of :data:`powerlb.balancing.ALGORITHMS`."""
    if text not in ALGORITHMS:
        choices = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {text!r}; choose one of: {choices}")
    return text


def parse_path(text: str) -> str:
    """A URL path such as ``/health``."""
    if not text.startswith("/") or any(char.isspace() for char in text):
        raise ValueError(f"{text!r} is not a URL path; write a path such as /health")
    return text


def parse_text(text: str) -> str:
    """Any text but the empty one."""
    if not text:
        raise ValueError("an empty value is not allowed; give a value or leave the option out")
    return text


def parse_networks(text: str) -> Tuple[str, ...]:
    """Comma-separated addresses or networks (``127.0.0.1, 10.0.0.0/8, ::1``), normalised."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            example = "127.0.0.1,10.0.0.0/8"
            raise ValueError(f"{part!r} is not an IP address or network; write e.g. {example}") from None
    return tuple(out)


def parse_ca_file(text: str) -> str:
    """``text`` if it names a readable PEM file of CA certificates."""
    load_ca_file(text)
    return text


#: The ``access-log-format`` values (see :mod:`powerlb.accesslog`).
ACCESS_LOG_FORMATS = ("combined", "json")


def parse_access_log_format(text: str) -> str:
    """One of :data:`ACCESS_LOG_FORMATS`."""
    if text not in ACCESS_LOG_FORMATS:
        raise ValueError(f"unknown format {text!r}; choose one of: {', '.join(ACCESS_LOG_FORMATS)}")
    return text


def parse_header_name(text: str) -> str:
    """An HTTP header name (a token) such as ``CDN-Cache-Control``."""
    if not TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name; write e.g. CDN-Cache-Control")
    return text


def parse_header_names(text: str) -> Tuple[str, ...]:
    """Comma-separated header names, at least one (a target list, RFC 9213 section 2.1)."""
    return tuple(parse_header_name(part.strip()) for part in text.split(","))


def parse_cookie_name(text: str) -> str:
    """A cookie name (a token) such as ``lb``."""
    if not TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a cookie name; write e.g. lb")
    return text


def parse_balance_factor(text: str) -> float:
    """A ``hash-balance-factor``: a number above 1, or 0 / ``off`` for no bound."""
    if text.strip().lower() == "off":
        return 0.0
    found = re.fullmatch(r"\s*([0-9]{1,6}(?:\.[0-9]{0,6})?)\s*", text)
    if found is None:
        raise ValueError(f"{text!r} is not a number; give a factor such as 1.25, or 0 for no bound")
    value = float(found.group(1))
    if value and value <= 1:
        raise ValueError(
            f"{text!r} must be more than 1; give e.g. 1.25 (25% over a backend's share), or 0 for no bound"
        )
    return value


def format_factor(value: float) -> str:
    """A balance factor as :func:`parse_balance_factor` reads it back (0 is ``off``)."""
    return _format_number(value) if value else "off"


def parse_switch(text: str) -> bool:
    """``on`` or ``off`` (YAML's true/false/yes/no arrive as on/off, see :mod:`powerlb.config`)."""
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{text!r} is neither on nor off; write on or off")
    return value == "on"


def format_switch(value: bool) -> str:
    return "on" if value else "off"


def parse_percent(text: str) -> int:
    """A whole percentage from 0 to 100: ``"50%"`` or ``"50"``."""
    found = re.fullmatch(r"\s*([0-9]{1,3})\s*%?\s*", text)
    if found is None or int(found.group(1)) > 100:
        raise ValueError(f"{text!r} is not a percentage from 0 to 100; write e.g. 50%")
    return int(found.group(1))


def format_percent(value: int) -> str:
    return f"{value}%"


class _PlaceholderReactor:
    """Stands in for the reactor while endpoint strings are only being checked."""


def parse_endpoint(text: str) -> str:
    """``text`` if it is a valid Twisted server endpoint string such as ``tcp:8080``."""
    try:
        serverFromString(_PlaceholderReactor(), text)
    # Endpoint parsers (including third-party plugins) raise ValueError, TypeError,
    # OSError (ssl key files)...: anything they raise means the string is unusable.
    except Exception as exc:
        raise ValueError(
            f"{text!r} is not a Twisted server endpoint ({exc}); e.g. tcp:8080 or ssl:8443:privateKey=key.pem"
        ) from None
    return text


def endpoint_kind(description: str) -> str:
    """The kind of a Twisted server endpoint description, lower-case: ``"tcp"`` for ``TCP:8080``,
    ``"ssl"``, ``"unix"`` ..."""
    return description.split(":", 1)[0].strip().lower()


_LOOPBACK = {"tcp": "127.0.0.1", "tcp6": r"\:\:1"}


def parse_admin_endpoint(text: str) -> str:
    """Like :func:`parse_endpoint`, but a ``tcp:`` (``tcp6:``) endpoint without ``interface=``
    binds to loopback: ``:interface=127.0.0.1`` (``::1``) is appended."""
    loopback = _LOOPBACK.get(endpoint_kind(text))
    arguments = text.split(":")[1:]
    if loopback and not any(arg.strip().startswith("interface=") for arg in arguments):
        text = f"{text}:interface={loopback}"
    return parse_endpoint(text)


#: A DNS name: dot-separated labels of letters, digits, ``-`` and ``_`` (SRV names start with ``_``).
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")


def parse_dns_name(text: str) -> str:
    """A DNS name such as ``_http._tcp.web.service.consul``, lower-cased, without a trailing dot."""
    name = text.strip()
    if not _DNS_NAME.fullmatch(name):
        raise ValueError(
            f"{text!r} is not a DNS name; write e.g. web.internal or _http._tcp.web.service.consul"
        )
    return name.rstrip(".").lower()


def _split_host_port(text: str, example: str) -> Tuple[str, str]:
    """``("HOST", "PORT")`` from ``HOST:PORT`` or ``[IPv6]:PORT``; PORT is ``""`` when not given."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} has a bad [IPv6] address; write e.g. {example}")
        return host, rest[1:] if rest else ""
    if text.count(":") > 1:
        return text, ""  # a bare IPv6 address
    host, _, port = text.partition(":")
    return host, port


def _parse_port(port: str, text: str, example: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", port) is None or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has port {port!r}; give a port from 1 to 65535, e.g. {example}")
    return int(port)


def format_host_port(address: Tuple[str, int]) -> str:
    """``HOST:PORT`` (``[IPv6]:PORT``), as :func:`parse_dns_target` and :func:`parse_dns_resolver` read it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_dns_target(text: str) -> Tuple[str, int]:
    """``(name, port)`` from ``NAME:PORT`` (``web.internal:8080``): its A/AAAA addresses are backends."""
    example = "web.internal:8080"
    host, port = _split_host_port(text, example)
    if not port:
        raise ValueError(f"{text!r} has no port; write NAME:PORT, e.g. {example}")
    return parse_dns_name(host), _parse_port(port, text, example)


def parse_dns_resolver(text: str) -> Tuple[str, int]:
    """``(address, port)`` of a DNS server from ``IP[:PORT]`` (``127.0.0.1:8600``, ``[::1]:53``; port 53)."""
    example = "127.0.0.1:8600"
    host, port = _split_host_port(text, example)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address; give the DNS server as IP[:PORT], e.g. {example}"
        ) from None
    return address, _parse_port(port, text, example) if port else 53


class RedisAddress(NamedTuple):
    """Where Redis is (``redis: redis://[user@]host[:port][/db]``, TLS with ``rediss://``)."""

    host: str
    port: int
    db: int
    tls: bool


def redis_address(text: str) -> RedisAddress:
    """The address a ``redis://`` or ``rediss://`` URL names. A password in the URL is refused:
    it would show on the command line and in the effective config."""
    example = "redis://127.0.0.1:6379/0"
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{text!r} is not a redis:// or rediss:// URL; write e.g. {example}")
    if parts.password is not None:
        raise ValueError("a password does not go in the URL; use redis-password-env or redis-password-file")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{text!r} has a bad port; write e.g. {example}") from None
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host; write e.g. {example}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: the path is the database number; write e.g. {example}")
    return RedisAddress(parts.hostname, port, int(db), parts.scheme == "rediss")


#: The port of a Redis Sentinel when ``redis-sentinel`` names none.
SENTINEL_PORT = 26379


def parse_sentinels(text: str) -> Tuple[Tuple[str, int], ...]:
    """The ``redis-sentinel`` addresses: ``HOST[:PORT][,HOST[:PORT]...]`` (``[IPv6]:PORT``; port
    26379 when not given), in the order to ask them."""
    example = "10.0.0.5:26379,10.0.0.6:26379"
    found = []
    for part in text.split(","):
        host, port = _split_host_port(part, example)
        if not host:
            raise ValueError(f"{text!r} has an empty address; write HOST:PORT[,HOST:PORT...], e.g. {example}")
        found.append((host, _parse_port(port, part, example) if port else SENTINEL_PORT))
    return tuple(found)


def format_sentinels(addresses: Tuple[Tuple[str, int], ...]) -> str:
    """``redis-sentinel`` as :func:`parse_sentinels` reads it."""
    return ",".join(format_host_port(address) for address in addresses)


def parse_redis(text: str) -> str:
    """A ``redis://`` or ``rediss://`` URL (see :func:`redis_address`)."""
    redis_address(text)
    return text.strip()


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_env_name(text: str) -> str:
    """An environment variable name such as ``REDIS_PASSWORD``."""
    if not _ENV_NAME.match(text):
        raise ValueError(f"{text!r} is not an environment variable name; write e.g. REDIS_PASSWORD")
    return text


def read_password(env: Optional[str], path: Optional[str]) -> Optional[str]:
    """The Redis password: the environment variable ``env`` when it is set, else the first line
    of the file ``path``, else None when neither is named; ValueError when none of those named
    gives one."""
    if env is not None and env in os.environ:
        return os.environ[env]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if env is not None:
        raise ValueError(f"the environment variable {env} is not set (and no redis-password-file)")
    return None
