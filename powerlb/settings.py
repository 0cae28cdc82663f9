"""The settings: :class:`Config`, the typed configuration, and :data:`SETTINGS`, the one
table that drives the ``twistd powerlb`` options (:class:`powerlb.tap.Options`), the YAML
keys (:mod:`powerlb.config`), the parsers (:mod:`powerlb.values`) and the help texts.

docs/configuration.md documents every row (tests/unit/test_config_reference.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Optional, Tuple

from powerlb.backend import BackendSpec
from powerlb.hashkey import parse_hash_key
from powerlb.outlier import GATEWAY_STATUSES, StatusRanges, format_statuses, parse_statuses
from powerlb.routing import Route

# The table names these parsers by the private aliases below.
from powerlb.values import above_zero as _above_zero
from powerlb.values import (
    format_backend,
    format_host_port,
    format_percent,
    format_sentinels,
    format_size,
    format_switch,
    parse_admin_endpoint,
    parse_duration,
    parse_endpoint,
    parse_env_name,
    parse_networks,
    parse_percent,
    parse_redis,
    parse_sentinels,
    parse_size,
    parse_switch,
)
from powerlb.values import format_duration as _format_duration
from powerlb.values import format_factor as _format_factor
from powerlb.values import parse_access_log_format as _parse_access_log_format
from powerlb.values import parse_algorithm as _parse_algorithm
from powerlb.values import parse_backend_entry as _parse_backend_entry
from powerlb.values import parse_balance_factor as _parse_balance_factor
from powerlb.values import parse_ca_file as _parse_ca_file
from powerlb.values import parse_cookie_name as _parse_cookie_name
from powerlb.values import parse_count as _parse_count
from powerlb.values import parse_dns_name as _parse_dns_name
from powerlb.values import parse_dns_resolver as _parse_dns_resolver
from powerlb.values import parse_dns_target as _parse_dns_target
from powerlb.values import parse_header_name as _parse_header_name
from powerlb.values import parse_header_names as _parse_header_names
from powerlb.values import parse_path as _parse_path
from powerlb.values import parse_text as _parse_text


@dataclass(frozen=True)
class Config:
    """Validated powerlb settings (sizes in bytes, durations in seconds, None = off)."""

    listen: str = "tcp:8080"
    backends: Tuple[BackendSpec, ...] = ()
    dns: Tuple[Tuple[str, int], ...] = ()
    srv: Optional[str] = None
    dns_resolver: Optional[Tuple[str, int]] = None
    dns_min_ttl: float = 5.0
    dns_max_ttl: float = 300.0
    algorithm: str = "round-robin"
    hash_key: str = "client"
    hash_balance_factor: float = 0.0
    sticky_cookie: Optional[str] = None
    health_check: bool = True
    health_path: Optional[str] = None
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
    cache_targeted_header: Tuple[str, ...] = ("CDN-Cache-Control",)
    cache_grace: float = 0.0
    cache_lock_timeout: float = 5.0
    purge_allow: Tuple[str, ...] = ()
    trusted_proxies: Tuple[str, ...] = ()
    request_id_header: str = "X-Request-ID"
    redis: Optional[str] = None
    redis_key_prefix: str = "powerlb:"
    redis_timeout: float = 0.05
    redis_password_env: Optional[str] = None
    redis_password_file: Optional[str] = None
    redis_sentinel: Optional[Tuple[Tuple[str, int], ...]] = None
    redis_sentinel_master: Optional[str] = None
    idle_timeout: float = 60.0
    tunnel_idle_timeout: float = 300.0
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
    outlier_statuses: StatusRanges = GATEWAY_STATUSES
    outlier_max_ejection: int = 50
    slow_start: float = 0.0
    backend_ca_file: Optional[str] = None
    http2: bool = True
    admin: Optional[str] = None
    admin_token: Optional[str] = None
    access_log: Optional[str] = None
    access_log_format: str = "combined"
    #: The pools by name (see :class:`PoolConfig`); :mod:`powerlb.config` fills it in, with the
    #: single pool ``default`` when the configuration has no ``pools:``.
    pools: Dict[str, PoolConfig] = field(default_factory=dict, hash=False)
    #: The routes, in order (first match wins); one catch-all route without ``routes:``.
    routes: Tuple[Route, ...] = ()


@dataclass(frozen=True)
class PoolConfig:
    """A pool of backends: its name and its settings, a :class:`Config` whose pool-scoped
    settings (``Setting.scope == "pool"``) are the pool's own and the others the top level's."""

    name: str
    settings: Config


_DEFAULTS: Dict[str, Any] = {item.name: item.default for item in fields(Config)}


@dataclass(frozen=True)
class Setting:
    """One option: its command-line name (also the YAML key unless ``yaml_key`` is set),
    the Config attribute, how to parse it and its help text. ``scope`` is ``"pool"`` for the
    settings of a set of backends, which each pool of ``pools:`` may set for itself."""

    name: str
    attr: str
    parse: Callable[[Any], Any]
    help: str
    show: Callable[[Any], str] = str
    cli: bool = True
    many: bool = False
    yaml_key: str = ""
    secret: bool = False
    scope: str = "top"

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
        scope="pool",
    ),
    Setting(
        "dns",
        "dns",
        _parse_dns_target,
        "backends from DNS: NAME:PORT, each A/AAAA address of NAME on PORT; repeat for more "
        "(YAML: dns: [...])",
        show=format_host_port,
        many=True,
        scope="pool",
    ),
    Setting(
        "srv",
        "srv",
        _parse_dns_name,
        "backends from DNS: an SRV name (e.g. _http._tcp.web.service.consul), with its ports and weights",
        scope="pool",
    ),
    Setting(
        "dns-resolver",
        "dns_resolver",
        _parse_dns_resolver,
        "DNS server for dns and srv, IP[:PORT] (e.g. Consul's 127.0.0.1:8600); off: /etc/resolv.conf's",
        show=format_host_port,
        scope="pool",
    ),
    Setting(
        "dns-min-ttl",
        "dns_min_ttl",
        _positive_duration,
        "dns and srv names are looked up again when their TTL ends, but never sooner than this",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "dns-max-ttl",
        "dns_max_ttl",
        _positive_duration,
        "dns and srv names are looked up again at least this often, whatever their TTL",
        show=_format_duration,
        scope="pool",
    ),
    Setting("algorithm", "algorithm", _parse_algorithm, "load-balancing algorithm", scope="pool"),
    Setting(
        "hash-key",
        "hash_key",
        parse_hash_key,
        "what consistent-hash hashes: client, uri, host-uri, header:NAME or cookie:NAME "
        "(missing: client address)",
        scope="pool",
    ),
    Setting(
        "hash-balance-factor",
        "hash_balance_factor",
        _parse_balance_factor,
        "consistent-hash bounded loads: a backend takes at most this times its share of the requests "
        "in flight (e.g. 1.25); 0 = unbounded",
        show=_format_factor,
        scope="pool",
    ),
    Setting(
        "sticky-cookie",
        "sticky_cookie",
        _parse_cookie_name,
        "cookie keeping each client on the backend that first answered it, over any algorithm",
        scope="pool",
    ),
    Setting(
        "health-check",
        "health_check",
        parse_switch,
        "active health checks: on (a TCP connect, or an HTTP GET of health-path when set) "
        "or off (passive outlier detection only)",
        show=format_switch,
        scope="pool",
    ),
    Setting(
        "health-path",
        "health_path",
        _parse_path,
        "path each backend is probed on with HTTP GET (2xx or 3xx pass), e.g. /health; "
        "without it the check is a TCP connect",
        scope="pool",
    ),
    Setting(
        "health-interval",
        "health_interval",
        _positive_duration,
        "time between health probes",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "health-timeout",
        "health_timeout",
        _positive_duration,
        "time a health probe may take",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "health-rise",
        "health_rise",
        _above_zero(_parse_count, "2"),
        "passed probes before a down backend is up",
        scope="pool",
    ),
    Setting(
        "health-fall",
        "health_fall",
        _above_zero(_parse_count, "3"),
        "failed probes before an up backend is down",
        scope="pool",
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
        _parse_header_names,
        "targeted Cache-Control fields (RFC 9213 target list, comma-separated, first valid one wins) that"
        " override Cache-Control; all but CDN-Cache-Control are for powerlb alone and not forwarded",
        show=",".join,
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
        "trusted-proxies",
        "trusted_proxies",
        parse_networks,
        "addresses or networks (comma-separated) of proxies whose X-Forwarded-For names the client",
        show=",".join,
    ),
    Setting(
        "request-id-header",
        "request_id_header",
        _parse_header_name,
        "request header carrying the request id; one is generated when a request has none",
    ),
    Setting(
        "redis",
        "redis",
        parse_redis,
        "redis://HOST[:PORT][/DB] (rediss:// for TLS) shared by several powerlb: a second cache tier "
        "and the bus for purges and admin changes (needs powerlb[redis])",
    ),
    Setting("redis-key-prefix", "redis_key_prefix", _parse_text, "prefix of every Redis key and channel"),
    Setting(
        "redis-timeout",
        "redis_timeout",
        _positive_duration,
        "a Redis lookup slower than this is a miss (and a store is dropped)",
        show=_format_duration,
    ),
    Setting(
        "redis-password-env",
        "redis_password_env",
        parse_env_name,
        "environment variable holding the Redis password",
    ),
    Setting(
        "redis-password-file",
        "redis_password_file",
        _parse_text,
        "file whose first line is the Redis password",
    ),
    Setting(
        "redis-sentinel",
        "redis_sentinel",
        parse_sentinels,
        "HOST[:PORT],... of Redis Sentinels to ask where the master of redis-sentinel-master is, "
        "at every (re)connection",
        show=format_sentinels,
    ),
    Setting(
        "redis-sentinel-master",
        "redis_sentinel_master",
        _parse_text,
        "the name the Sentinels know the Redis master by (with redis-sentinel)",
    ),
    Setting(
        "response-timeout",
        "response_timeout",
        _positive_duration,
        "time a backend may take to answer",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "connect-timeout",
        "connect_timeout",
        _positive_duration,
        "time a backend connection may take",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "idle-timeout",
        "idle_timeout",
        _positive_duration,
        "time a backend may pause between two pieces of a response body",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "tunnel-idle-timeout",
        "tunnel_idle_timeout",
        _positive_duration,
        "time an upgraded connection (WebSocket...) may pass no byte either way before it is closed",
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
        scope="pool",
    ),
    Setting(
        "backend-queue-timeout",
        "backend_queue_timeout",
        _positive_duration,
        "time a request may wait for a backend connection slot before a 503",
        show=_format_duration,
        scope="pool",
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
        scope="pool",
    ),
    Setting(
        "keepalive-max-idle",
        "keepalive_max_idle",
        _parse_count,
        "idle upstream connections kept per backend; 0 disables reuse (YAML only)",
        cli=False,
        scope="pool",
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
        scope="pool",
    ),
    Setting(
        "outlier-failures",
        "outlier_failures",
        _parse_count,
        "consecutive gateway failures (connect failures, resets, timeouts, malformed responses, "
        "outlier-statuses) that take a backend out; 0 turns it off",
        scope="pool",
    ),
    Setting(
        "outlier-backoff",
        "outlier_backoff",
        _positive_duration,
        "how long an outlier stays out the first time; doubles while it keeps failing",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "outlier-statuses",
        "outlier_statuses",
        parse_statuses,
        "response statuses that count as failures for outlier detection, e.g. 500-599 or 429,502-504; "
        "off: none",
        show=format_statuses,
        scope="pool",
    ),
    Setting(
        "outlier-max-ejection",
        "outlier_max_ejection",
        parse_percent,
        "most of the backends outlier detection may take out at once; it never takes out the last one",
        show=format_percent,
        scope="pool",
    ),
    Setting(
        "slow-start",
        "slow_start",
        parse_duration,
        "a backend coming back ramps its weight up over this time; 0 turns it off",
        show=_format_duration,
        scope="pool",
    ),
    Setting(
        "backend-ca-file",
        "backend_ca_file",
        _parse_ca_file,
        "PEM file of the CAs that https:// backend certificates must chain to; default: the system's",
        scope="pool",
    ),
    Setting(
        "http2",
        "http2",
        parse_switch,
        "on an ssl: listener, offer HTTP/2 (ALPN h2) besides HTTP/1.1; off: HTTP/1.1 only",
        show=format_switch,
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

#: The settings the command line takes, by option name (``backend``, ``cache-size``...).
BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS if setting.cli}
#: Every setting by YAML key (``backends``, ``cache-size``...).
BY_KEY: Dict[str, Setting] = {setting.key: setting for setting in SETTINGS}
#: The settings each pool of ``pools:`` may set, by YAML key.
POOL_KEYS: Dict[str, Setting] = {setting.key: setting for setting in SETTINGS if setting.scope == "pool"}
