"""Configuration: one option table drives the ``twistd powerlb`` options, the YAML keys,
parsing and validation.

Precedence is defaults < YAML file (``--config FILE``) < command line. Every
problem is reported as a one-line :class:`ConfigError` that says what is wrong
and how to fix it.

Nothing here imports ``twisted.internet.reactor``: twistd installs the reactor
(``--reactor``) only after option parsing, so endpoint strings are checked
against a placeholder reactor.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import yaml
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from powerlb.backend import BackendSpec
from powerlb.hashkey import parse_hash_key
from powerlb.headers import TOKEN
from powerlb.tls import TLS_EXTRA_HINT, load_ca_file, tls_available


class ConfigError(ValueError):
    """A bad setting: ``field`` names it, ``problem`` says what is wrong and the fix."""

    def __init__(self, field: str, problem: str) -> None:
        problem = " ".join(line.strip() for line in problem.splitlines())
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --- value parsers: each takes text and returns a value or raises ValueError(reason; fix) ---

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


def _parse_quantity(text: str, units: Mapping[str, Any], what: str, example: str) -> Fraction:
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


def _format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it back (``"0.5s"``)."""
    return _format_number(seconds) + "s"


def _parse_count(text: str) -> int:
    if re.fullmatch(r"\s*[+-]?[0-9]{1,18}\s*", text) is None:
        raise ValueError(f"{text!r} is not a whole number; give a number such as 3")
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative; give a number such as 3")
    return value


def _above_zero(parse: Callable[[str], Any], example: str) -> Callable[[str], Any]:
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


def _parse_backend_entry(entry: Any) -> BackendSpec:
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
        options.append(f"weight={_as_text(entry['weight'])}")
    backup = entry.get("backup", False)
    if not isinstance(backup, bool):
        raise ValueError(f"backup: {backup!r} in {entry!r} is not true or false")
    if backup:
        options.append("backup")
    return parse_backend(",".join(options))


def _parse_algorithm(text: str) -> str:
    from powerlb.balancing import ALGORITHMS

    if text not in ALGORITHMS:
        choices = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {text!r}; choose one of: {choices}")
    return text


def _parse_path(text: str) -> str:
    if not text.startswith("/") or any(char.isspace() for char in text):
        raise ValueError(f"{text!r} is not a URL path; write a path such as /health")
    return text


def _parse_text(text: str) -> str:
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


def _parse_ca_file(text: str) -> str:
    """``text`` if it names a readable PEM file of CA certificates."""
    load_ca_file(text)
    return text


#: The ``access-log-format`` values (see :mod:`powerlb.accesslog`).
ACCESS_LOG_FORMATS = ("combined", "json")


def _parse_access_log_format(text: str) -> str:
    if text not in ACCESS_LOG_FORMATS:
        raise ValueError(f"unknown format {text!r}; choose one of: {', '.join(ACCESS_LOG_FORMATS)}")
    return text


#: The words a switch (``http2``) takes; YAML's own ``on``/``off``/``true``/``false`` arrive as booleans.
_SWITCHES = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}


def parse_switch(text: str) -> bool:
    """``on`` or ``off`` (or ``true``/``false``, ``yes``/``no``) as a bool."""
    value = _SWITCHES.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{text!r} is neither on nor off; write on or off")
    return value


def _format_switch(value: bool) -> str:
    return "on" if value else "off"


def _parse_header_name(text: str) -> str:
    if not TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name; write e.g. CDN-Cache-Control")
    return text


def _parse_cookie_name(text: str) -> str:
    if not TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a cookie name; write e.g. lb")
    return text


def _parse_balance_factor(text: str) -> float:
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


def _format_factor(value: float) -> str:
    return _format_number(value) if value else "off"


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


_LOOPBACK = {"tcp": "127.0.0.1", "tcp6": r"\:\:1"}


def parse_admin_endpoint(text: str) -> str:
    """Like :func:`parse_endpoint`, but a ``tcp:`` (``tcp6:``) endpoint without ``interface=``
    binds to loopback: ``:interface=127.0.0.1`` (``::1``) is appended."""
    kind, *arguments = text.split(":")
    loopback = _LOOPBACK.get(kind.strip().lower())
    if loopback and not any(arg.strip().startswith("interface=") for arg in arguments):
        text = f"{text}:interface={loopback}"
    return parse_endpoint(text)


# --- the configuration and its option table ---


@dataclass(frozen=True)
class Config:
    """Validated powerlb settings (sizes in bytes, durations in seconds, None = off)."""

    listen: str = "tcp:8080"
    backends: Tuple[BackendSpec, ...] = ()
    algorithm: str = "round-robin"
    hash_key: str = "client"
    hash_balance_factor: float = 0.0
    sticky_cookie: Optional[str] = None
    health_path: str = "/health"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_rise: int = 2
    health_fall: int = 3
    cache_size: int = 64 * 1024 * 1024
    cache_max_object: int = 1024 * 1024
    cache_sweep_interval: float = 10.0
    response_timeout: float = 30.0
    connect_timeout: float = 5.0
    keepalive_timeout: float = 60.0
    keepalive_max_idle: int = 64
    cache_targeted_header: str = "CDN-Cache-Control"
    cache_grace: float = 0.0
    cache_lock_timeout: float = 5.0
    purge_allow: Tuple[str, ...] = ()
    idle_timeout: float = 60.0
    client_timeout: float = 30.0
    max_body: int = 100 * 1024 * 1024
    max_header_size: int = 32 * 1024
    max_headers: int = 100
    max_url_length: int = 8 * 1024
    max_connections: int = 10000
    backend_max_connections: int = 0
    backend_queue_timeout: float = 5.0
    drain_timeout: float = 30.0
    workers: int = 1
    retries: int = 1
    outlier_failures: int = 5
    outlier_backoff: float = 10.0
    slow_start: float = 0.0
    backend_ca_file: Optional[str] = None
    http2: bool = True
    admin: Optional[str] = None
    admin_token: Optional[str] = None
    access_log: Optional[str] = None
    access_log_format: str = "combined"


_DEFAULTS: Dict[str, Any] = {field.name: field.default for field in fields(Config)}


@dataclass(frozen=True)
class Setting:
    """One option: its command-line name (also the YAML key unless ``yaml_key`` is set),
    the Config attribute, how to parse it and its help text."""

    name: str
    attr: str
    parse: Callable[[Any], Any]
    help: str
    show: Callable[[Any], str] = str
    cli: bool = True
    many: bool = False
    yaml_key: str = ""
    secret: bool = False

    @property
    def key(self) -> str:
        """The YAML (and :func:`config_from_mapping`) key."""
        return self.yaml_key or self.name

    @property
    def default(self) -> Any:
        """The default, taken from :class:`Config`."""
        return _DEFAULTS[self.attr]

    def describe(self) -> str:
        """Help text with the default appended."""
        if self.many:
            return self.help
        shown = "off" if self.default is None else self.show(self.default)
        return f"{self.help} [default: {shown or 'none'}]"

    def written(self, value: Any) -> Any:
        """``value`` as a config file writes it (None when off; numbers stay numbers; lists for ``many``)."""
        if value is None:
            return None
        if self.many:
            return [self.show(item) for item in value]
        if self.show is str and isinstance(value, (int, float)):
            return value
        return self.show(value)


_positive_duration = _above_zero(parse_duration, "2s")

SETTINGS: Tuple[Setting, ...] = (
    Setting("listen", "listen", parse_endpoint, "Twisted endpoint to serve on"),
    Setting(
        "backend",
        "backends",
        _parse_backend_entry,
        "backend http[s]://HOST[:PORT][,weight=N]; repeat for more (YAML: backends: [...])",
        show=format_backend,
        many=True,
        yaml_key="backends",
    ),
    Setting("algorithm", "algorithm", _parse_algorithm, "load-balancing algorithm"),
    Setting(
        "hash-key",
        "hash_key",
        parse_hash_key,
        "what consistent-hash hashes: client, uri, header:NAME or cookie:NAME (missing: client address)",
    ),
    Setting(
        "hash-balance-factor",
        "hash_balance_factor",
        _parse_balance_factor,
        "consistent-hash bounded loads: a backend takes at most this times its share of the requests "
        "in flight (e.g. 1.25); 0 = unbounded",
        show=_format_factor,
    ),
    Setting(
        "sticky-cookie",
        "sticky_cookie",
        _parse_cookie_name,
        "cookie keeping each client on the backend that first answered it, over any algorithm",
    ),
    Setting("health-path", "health_path", _parse_path, "path probed on each backend"),
    Setting(
        "health-interval",
        "health_interval",
        _positive_duration,
        "time between health probes",
        show=_format_duration,
    ),
    Setting(
        "health-timeout",
        "health_timeout",
        _positive_duration,
        "time a health probe may take",
        show=_format_duration,
    ),
    Setting(
        "health-rise",
        "health_rise",
        _above_zero(_parse_count, "2"),
        "passed probes before a down backend is up",
    ),
    Setting(
        "health-fall",
        "health_fall",
        _above_zero(_parse_count, "3"),
        "failed probes before an up backend is down",
    ),
    Setting(
        "cache-size",
        "cache_size",
        parse_size,
        "response cache size, e.g. 64MiB; 0 disables the cache",
        show=format_size,
    ),
    Setting(
        "cache-max-object",
        "cache_max_object",
        _above_zero(parse_size, "1MiB"),
        "largest response body the cache stores",
        show=format_size,
    ),
    Setting(
        "cache-sweep-interval",
        "cache_sweep_interval",
        _positive_duration,
        "time between sweeps of expired cache entries (YAML only)",
        show=_format_duration,
        cli=False,
    ),
    Setting(
        "cache-targeted-header",
        "cache_targeted_header",
        _parse_header_name,
        "targeted Cache-Control field (RFC 9213) that overrides Cache-Control and is not forwarded",
    ),
    Setting(
        "cache-grace",
        "cache_grace",
        parse_duration,
        "serve a stale response this long past its freshness when the backend fails (stale-if-error)",
        show=_format_duration,
    ),
    Setting(
        "cache-lock-timeout",
        "cache_lock_timeout",
        _positive_duration,
        "concurrent misses wait this long for the one request sent upstream, then go themselves",
        show=_format_duration,
    ),
    Setting(
        "purge-allow",
        "purge_allow",
        parse_networks,
        "addresses or networks (comma-separated) allowed to send PURGE on the proxy listener",
        show=",".join,
    ),
    Setting(
        "response-timeout",
        "response_timeout",
        _positive_duration,
        "time a backend may take to answer",
        show=_format_duration,
    ),
    Setting(
        "connect-timeout",
        "connect_timeout",
        _positive_duration,
        "time a backend connection may take",
        show=_format_duration,
    ),
    Setting(
        "idle-timeout",
        "idle_timeout",
        _positive_duration,
        "time a backend may pause between two pieces of a response body",
        show=_format_duration,
    ),
    Setting(
        "client-timeout",
        "client_timeout",
        _positive_duration,
        "time a client may take to send a request's headers, and its body; also the keep-alive idle time",
        show=_format_duration,
    ),
    Setting(
        "max-body",
        "max_body",
        _above_zero(parse_size, "100MiB"),
        "largest request body accepted (413 beyond)",
        show=format_size,
    ),
    Setting(
        "max-header-size",
        "max_header_size",
        _above_zero(parse_size, "32KiB"),
        "largest request header section accepted (431 beyond)",
        show=format_size,
    ),
    Setting(
        "max-headers",
        "max_headers",
        _above_zero(_parse_count, "100"),
        "most request header lines accepted (431 beyond)",
    ),
    Setting(
        "max-url-length",
        "max_url_length",
        _above_zero(parse_size, "8KiB"),
        "longest request target accepted (414 beyond)",
        show=format_size,
    ),
    Setting(
        "max-connections",
        "max_connections",
        _above_zero(_parse_count, "10000"),
        "client connections served at once; more are answered 503 and closed",
    ),
    Setting(
        "backend-max-connections",
        "backend_max_connections",
        _parse_count,
        "connections to one backend at once; further requests wait in a queue; 0 = no limit",
    ),
    Setting(
        "backend-queue-timeout",
        "backend_queue_timeout",
        _positive_duration,
        "time a request may wait for a backend connection slot before a 503",
        show=_format_duration,
    ),
    Setting(
        "drain-timeout",
        "drain_timeout",
        _positive_duration,
        "on shutdown, time in-flight requests get to finish before connections are closed",
        show=_format_duration,
    ),
    Setting(
        "keepalive-timeout",
        "keepalive_timeout",
        _positive_duration,
        "idle upstream keep-alive connections are closed after this",
        show=_format_duration,
    ),
    Setting(
        "keepalive-max-idle",
        "keepalive_max_idle",
        _parse_count,
        "idle upstream connections kept per backend; 0 disables reuse (YAML only)",
        cli=False,
    ),
    Setting(
        "workers",
        "workers",
        _above_zero(_parse_count, "2"),
        "processes sharing the listening socket (tcp: endpoints); 1 serves from the main process",
    ),
    Setting(
        "retries",
        "retries",
        _parse_count,
        "times an idempotent request that never reached a backend is tried on another",
    ),
    Setting(
        "outlier-failures",
        "outlier_failures",
        _parse_count,
        "consecutive connect failures, resets or 5xx that take a backend out; 0 turns it off",
    ),
    Setting(
        "outlier-backoff",
        "outlier_backoff",
        _positive_duration,
        "how long an outlier stays out the first time; doubles while it keeps failing",
        show=_format_duration,
    ),
    Setting(
        "slow-start",
        "slow_start",
        parse_duration,
        "a backend coming back ramps its weight up over this time; 0 turns it off",
        show=_format_duration,
    ),
    Setting(
        "backend-ca-file",
        "backend_ca_file",
        _parse_ca_file,
        "PEM file of the CAs that https:// backend certificates must chain to; default: the system's",
    ),
    Setting(
        "http2",
        "http2",
        parse_switch,
        "on an ssl: listener, offer HTTP/2 (ALPN h2) besides HTTP/1.1; off: HTTP/1.1 only",
        show=_format_switch,
    ),
    Setting(
        "admin",
        "admin",
        parse_admin_endpoint,
        "Twisted endpoint for the admin API; tcp: without interface= binds to 127.0.0.1",
    ),
    Setting(
        "admin-token",
        "admin_token",
        _parse_text,
        "bearer token required for changes through the runtime API (/api/v1/)",
        secret=True,
    ),
    Setting("access-log", "access_log", _parse_text, "access log file, or - for stdout"),
    Setting(
        "access-log-format",
        "access_log_format",
        _parse_access_log_format,
        "access log lines: combined (plus upstream, upstream_time, cache) or json",
    ),
)

_BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS if setting.cli}
_BY_KEY: Dict[str, Setting] = {setting.key: setting for setting in SETTINGS}


def _as_text(raw: Any) -> str:
    """A YAML scalar as the text a parser reads (numbers are spelled out)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    raise ValueError(f"{raw!r} is not a single value; give text or a number")


def backend_from_entry(entry: Any) -> BackendSpec:
    """One backend as the ``backends`` setting reads it: a URL string or a ``{url, weight, backup}``
    mapping; a bad one raises ConfigError naming the ``backend`` field."""
    return _parse_setting(_BY_KEY["backends"], [entry])[0]


def config_to_mapping(config: Config, redact: bool = True) -> Dict[str, Any]:
    """``config`` with the YAML keys, values as a config file writes them (:func:`config_from_mapping`
    reads it back); ``redact`` hides secrets such as the admin token."""
    out: Dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting.written(getattr(config, setting.attr))
        out[setting.key] = "<redacted>" if redact and setting.secret and value is not None else value
    return out


def _parse_setting(setting: Setting, raw: Any) -> Any:
    """The Config value for ``raw`` (text, a YAML value, or a list of them), or ConfigError."""
    try:
        if setting.many:
            if not isinstance(raw, (list, tuple)):
                raise ValueError(f"{raw!r} is not a list; give a YAML list, one entry per line")
            return tuple(setting.parse(item) for item in raw)
        if raw is None and setting.default is None:
            return None
        if isinstance(raw, bool) and setting.parse is parse_switch:
            return raw  # YAML's on/off/true/false
        return setting.parse(_as_text(raw))
    except ValueError as exc:
        raise ConfigError(setting.name, str(exc)) from None


def _check_keys(given: Mapping[Any, Any], valid: Mapping[str, Setting], field: str) -> None:
    for key in given:
        if key not in valid:
            raise ConfigError(field, f"unknown key {key!r}; valid keys are: {', '.join(valid)}")


def _values_from_mapping(mapping: Mapping[Any, Any], field: str) -> Dict[str, Any]:
    _check_keys(mapping, _BY_KEY, field)
    return {_BY_KEY[key].attr: _parse_setting(_BY_KEY[key], raw) for key, raw in mapping.items()}


def _finish(values: Mapping[str, Any]) -> Config:
    if not values.get("backends"):
        raise ConfigError("backend", "no backends given; add --backend http://HOST:PORT")
    config = Config(**values)
    _check_backends_differ(config.backends)
    _check_hashing(config)
    if config.workers > 1 and config.listen.split(":", 1)[0].strip().lower() not in ("tcp", "tcp6"):
        raise ConfigError("workers", f"several workers need a tcp: listen endpoint, not {config.listen!r}")
    return config


def _check_backends_differ(backends: Tuple[BackendSpec, ...]) -> None:
    """Each backend (``host:port``) is given once."""
    seen: Dict[str, str] = {}
    for spec in backends:
        if spec.id in seen:
            raise ConfigError(
                "backend",
                f"{seen[spec.id]} and {spec.url} are the same server {spec.id}; give each backend once",
            )
        seen[spec.id] = spec.url


def _check_hashing(config: Config) -> None:
    """The hashing settings are set only with an algorithm that reads them."""
    from powerlb.balancing import ALGORITHMS, ConsistentHash

    if ALGORITHMS[config.algorithm] is ConsistentHash:
        return
    for setting, is_set in (
        ("hash-key", config.hash_key != "client"),
        ("hash-balance-factor", config.hash_balance_factor),
    ):
        if is_set:
            raise ConfigError(
                setting,
                f"only consistent-hash uses it, not {config.algorithm}; "
                f"set algorithm: consistent-hash or leave {setting} out",
            )


def config_from_mapping(mapping: Mapping[str, Any]) -> Config:
    """A Config from YAML-style keys, e.g. ``{"listen": "tcp:0", "backends": ["http://..."]}``."""
    return _finish(_values_from_mapping(mapping, "config"))


def _read_yaml(path: str) -> Mapping[Any, Any]:
    try:
        with open(path, "rb") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            "config", f"cannot read {path!r} ({reason}); give the path of a readable YAML file"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            "config", f"{path!r} is not valid YAML: {problem}{where}; fix the syntax there"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            "config",
            f"{path!r} holds a {type(data).__name__}, not a mapping; "
            "write 'key: value' lines such as 'listen: tcp:8080'",
        )
    return data


def build_config(cli: Mapping[str, Any], config_file: Optional[str] = None) -> Config:
    """Defaults < the YAML ``config_file`` < ``cli`` (command-line names; None or an empty
    ``backend`` list means not given; given ``backend``\\ s replace the YAML ``backends``)."""
    _check_keys(cli, _BY_NAME, "option")
    values = _values_from_mapping(_read_yaml(config_file), "config") if config_file else {}
    for name, raw in cli.items():
        if raw not in (None, [], ()):
            values[_BY_NAME[name].attr] = _parse_setting(_BY_NAME[name], raw)
    return _finish(values)


class Options(usage.Options):
    """Command-line options of ``twistd powerlb``; after parsing, ``self.config`` is the Config."""

    synopsis = "[options]"
    optParameters: List[List[Any]] = [
        [setting.name, None, None, setting.describe()]
        for setting in SETTINGS
        if setting.cli and not setting.many
    ] + [["config", None, None, "YAML file with the same keys (command-line options win)"]]

    def __init__(self) -> None:
        super().__init__()
        self["backend"] = []
        self.config: Optional[Config] = None

    def opt_backend(self, value: str) -> None:
        self["backend"].append(value)

    opt_backend.__doc__ = _BY_NAME["backend"].describe()

    def postOptions(self) -> None:
        """Build ``self.config``; a bad setting becomes a one-line UsageError."""
        cli = {name: value for name, value in self.items() if name != "config"}
        try:
            self.config = build_config(cli, self["config"])
        except ConfigError as err:
            raise usage.UsageError(str(err)) from err
