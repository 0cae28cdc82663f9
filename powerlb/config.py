"""Loading the configuration: a :class:`Config` from YAML-style keys, a YAML file and the
command line, checked setting by setting and across settings.

Precedence is defaults < YAML file (``--config FILE``) < command line. Every
problem is reported as a one-line :class:`ConfigError` that says what is wrong
and how to fix it. The settings themselves are the table in :mod:`powerlb.settings`;
their value grammar is :mod:`powerlb.values`.

``from powerlb.config import Config, ConfigError, config_from_mapping`` is the
public import path for embedding powerlb.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Tuple

from powerlb.backend import BackendSpec
from powerlb.balancing import ALGORITHMS, ConsistentHash
from powerlb.outlier import parse_statuses
from powerlb.routing import Route
from powerlb.settings import BY_KEY, BY_NAME, POOL_KEYS, SETTINGS, Config, PoolConfig, Setting
from powerlb.values import as_text, endpoint_kind, format_duration, parse_switch, read_password, redis_address

__all__ = [
    "Config",
    "ConfigError",
    "backend_from_entry",
    "build_config",
    "config_from_mapping",
    "config_to_mapping",
]

#: The parsers that read ``on`` or ``off``, which YAML gives as booleans.
_TAKES_ON_OFF = (parse_switch, parse_statuses)


class ConfigError(ValueError):
    """A bad setting: ``field`` names it, ``problem`` says what is wrong and the fix."""

    def __init__(self, field: str, problem: str) -> None:
        problem = " ".join(line.strip() for line in problem.splitlines())
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def backend_from_entry(entry: Any) -> BackendSpec:
    """One backend as the ``backends`` setting reads it: a URL string or a ``{url, weight, backup}``
    mapping; a bad one raises ConfigError naming the ``backend`` field."""
    specs: List[BackendSpec] = _parse_setting(BY_KEY["backends"], [entry])
    return specs[0]


def config_to_mapping(config: Config, redact: bool = True) -> Dict[str, Any]:
    """``config`` with the YAML keys, values as a config file writes them (:func:`config_from_mapping`
    reads it back); ``redact`` hides secrets such as the admin token. ``pools`` and ``routes``
    are written unless the configuration is the single-pool form."""
    out: Dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting.written(getattr(config, setting.attr))
        out[setting.key] = "<redacted>" if redact and setting.secret and value is not None else value
    pools = {
        name: {
            setting.key: setting.written(getattr(pool.settings, setting.attr))
            for setting in POOL_KEYS.values()
            if getattr(pool.settings, setting.attr) != getattr(config, setting.attr)
        }
        for name, pool in config.pools.items()
    }
    if pools != {"default": {}} or config.routes != (Route(pool="default"),):
        out["pools"] = pools
        # Imported here: only pools and routes need powerlb.routeconfig (import-light start-up).
        from powerlb.routeconfig import route_to_mapping

        out["routes"] = [route_to_mapping(route) for route in config.routes]
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
        if isinstance(raw, bool) and setting.parse in _TAKES_ON_OFF:
            raw = "on" if raw else "off"  # YAML reads on/off (yes/no, true/false) as booleans
        return setting.parse(as_text(raw))
    except ValueError as exc:
        raise ConfigError(setting.name, str(exc)) from None


def _check_keys(given: Mapping[Any, Any], valid: Collection[str], field: str, of: str = "") -> None:
    """Every key of ``given`` is ``valid``; else a ConfigError naming ``field``, or ``of.KEY``."""
    for key in given:
        if key not in valid:
            where = f"{of}.{key}" if of else field
            raise ConfigError(where, f"unknown key {key!r}; valid keys are: {', '.join(valid)}")


#: The keys of a configuration mapping beside the settings'.
_SECTIONS = ("pools", "routes")


def _values_from_mapping(mapping: Mapping[Any, Any], field: str) -> Dict[str, Any]:
    """The settings' values of ``mapping``, by Config attribute (``pools:`` and ``routes:`` left out)."""
    _check_keys(mapping, [*BY_KEY, *_SECTIONS], field)
    return {
        BY_KEY[key].attr: _parse_setting(BY_KEY[key], raw) for key, raw in mapping.items() if key in BY_KEY
    }


def _finish(values: Mapping[str, Any], sections: Optional[Mapping[Any, Any]] = None) -> Config:
    """The Config of the settings' ``values`` and the ``pools:`` and ``routes:`` of ``sections``."""
    sections = sections or {}
    if sections.get("pools") is None:
        if not _finds_backends(values):
            raise ConfigError(
                "backend",
                "no backends given; add --backend http://HOST:PORT (or find them in DNS: --dns, --srv)",
            )
    else:
        _check_no_top_level_dns(values)
    config = Config(**values)
    _check_dns(config)
    _check_backends_differ(config.backends)
    _check_hashing(config)
    _check_redis(config)
    if config.workers > 1 and endpoint_kind(config.listen) not in ("tcp", "tcp6"):
        raise ConfigError("workers", f"several workers need a tcp: listen endpoint, not {config.listen!r}")
    pools = _pools(config, sections.get("pools"))
    return dataclasses.replace(config, pools=pools, routes=_routes(sections.get("routes"), pools))


def _finds_backends(values: Mapping[str, Any]) -> bool:
    """Whether settings (by Config attribute) give backends, or find them in DNS."""
    return bool(values.get("backends") or values.get("dns") or values.get("srv") is not None)


def _check_no_top_level_dns(values: Mapping[str, Any]) -> None:
    """With ``pools:``, ``dns`` and ``srv`` are set per pool: at the top level, every pool
    would inherit them and look the same names up."""
    for key in ("dns", "srv"):
        setting = BY_KEY[key]
        if values.get(setting.attr) not in (None, ()):
            raise ConfigError(
                key,
                f"with pools:, each pool finds its own backends; set {key} under pools.NAME "
                f"(e.g. pools: {{web: {{{key}: ...}}}}) and leave the top-level {key} out",
            )


def _pools(top: Config, raw: Any) -> Dict[str, PoolConfig]:
    """The pools of ``pools:`` (``raw``), each setting defaulting to ``top``; without it, ``default``."""
    if raw is None:
        return {"default": PoolConfig("default", top)}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            "pools",
            f"{raw!r} is not a mapping of pool names to settings; write e.g. web: {{backends: [...]}}",
        )
    # Imported here: only pools and routes need powerlb.routeconfig (import-light start-up).
    from powerlb.routeconfig import parse_pool_name

    pools: Dict[str, PoolConfig] = {}
    for name, entry in raw.items():
        where = f"pools.{name}"
        try:
            parse_pool_name(name)
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
        values = _section_entry(
            {} if entry is None else entry,
            POOL_KEYS,
            where,
            "give the pool's settings, e.g. backends: [...]",
            lambda key, value: (POOL_KEYS[key].attr, _parse_setting(POOL_KEYS[key], value)),
        )
        settings = dataclasses.replace(top, **values)
        if not _finds_backends(vars(settings)):
            raise ConfigError(
                f"{where}.backends",
                "no backends given; add backends: [http://HOST:PORT] (or find them in DNS: dns, srv)",
            )
        _check_backends_differ(settings.backends, f"{where}.backends")
        _check_dns(settings, f"{where}.")
        _check_hashing(settings, f"{where}.")
        pools[name] = PoolConfig(name, settings)
    return pools


def _section_entry(
    entry: Any,
    keys: Collection[str],
    where: str,
    example: str,
    parse: Callable[[str, Any], Tuple[str, Any]],
) -> Dict[str, Any]:
    """The values of one ``pools:`` or ``routes:`` entry, by ``parse(key, value) -> (name, value)``;
    a bad entry or value is a ConfigError naming ``where`` (and the key)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(where, f"{entry!r} is not a mapping; {example}")
    _check_keys(entry, keys, where, of=where)
    values: Dict[str, Any] = {}
    for key, value in entry.items():
        try:
            name, parsed = parse(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{key}", exc.problem) from None
        except ValueError as exc:
            raise ConfigError(f"{where}.{key}", str(exc)) from None
        values[name] = parsed
    return values


def _routes(raw: Any, pools: Mapping[str, PoolConfig]) -> Tuple[Route, ...]:
    """The routes of ``routes:`` (``raw``); without it, one catch-all route to the only pool
    or to ``default``."""
    if raw is None:
        if len(pools) == 1 or "default" in pools:
            return (Route(pool="default" if "default" in pools else next(iter(pools))),)
        raise ConfigError("routes", "several pools need routes; add routes: with the pool of each request")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "routes", f"{raw!r} is not a list of routes; write e.g. - {{path-prefix: /api/, pool: api}}"
        )
    # Imported here: only pools and routes need powerlb.routeconfig (import-light start-up).
    from powerlb.routeconfig import ROUTE_KEYS, RouteKeyError, build_route

    routes = []
    for index, entry in enumerate(raw):
        where = f"routes[{index}]"
        values = _section_entry(
            entry,
            ROUTE_KEYS,
            where,
            "write e.g. {host: api.example.com, pool: api}",
            lambda key, value: (key, ROUTE_KEYS[key].parse(value)),
        )
        try:
            route = build_route(values, index)
        except RouteKeyError as exc:
            raise ConfigError(f"{where}.{exc.key}", str(exc)) from None
        if route.pool is not None and route.pool not in pools:
            raise ConfigError(
                f"{where}.pool", f"unknown pool {route.pool!r}; name one of: {', '.join(pools)}"
            )
        routes.append(route)
    for index, route in enumerate(routes[:-1]):
        if route.matches_everything:
            raise ConfigError(
                f"routes[{index + 1}]",
                f"never used: routes[{index}] has no match keys and takes every request; "
                "move the catch-all route to the end",
            )
    return tuple(routes)


def _check_backends_differ(backends: Tuple[BackendSpec, ...], field: str = "backend") -> None:
    """Each backend (``host:port``) is given once."""
    seen: Dict[str, str] = {}
    for spec in backends:
        if spec.id in seen:
            raise ConfigError(
                field,
                f"{seen[spec.id]} and {spec.url} are the same server {spec.id}; give each backend once",
            )
        seen[spec.id] = spec.url


def _check_dns(config: Config, where: str = "") -> None:
    """``dns-min-ttl`` is at most ``dns-max-ttl`` (``where``: the field's prefix, e.g. ``pools.web.``)."""
    if config.dns_min_ttl > config.dns_max_ttl:
        raise ConfigError(
            where + "dns-min-ttl",
            f"{format_duration(config.dns_min_ttl)} is more than dns-max-ttl "
            f"({format_duration(config.dns_max_ttl)}); lower dns-min-ttl or raise dns-max-ttl",
        )


def _check_hashing(config: Config, where: str = "") -> None:
    """The hashing settings are set only with an algorithm that reads them (``where``: the
    field's prefix, e.g. ``pools.web.``)."""
    if ALGORITHMS[config.algorithm] is ConsistentHash:
        return
    for setting, is_set in (
        ("hash-key", config.hash_key != "client"),
        ("hash-balance-factor", config.hash_balance_factor),
    ):
        if is_set:
            raise ConfigError(
                where + setting,
                f"only consistent-hash uses it, not {config.algorithm}; "
                f"set algorithm: consistent-hash or leave {setting} out",
            )


def _check_redis(config: Config) -> None:
    """The redis-* settings go with ``redis``, and a password named must be there."""
    if config.redis is None:
        for name in (
            "redis-key-prefix",
            "redis-timeout",
            "redis-password-env",
            "redis-password-file",
            "redis-sentinel",
            "redis-sentinel-master",
        ):
            if getattr(config, BY_NAME[name].attr) != BY_NAME[name].default:
                raise ConfigError(
                    name, "it applies only with redis; set redis: redis://HOST:PORT or leave it out"
                )
        return
    if (config.redis_sentinel is None) != (config.redis_sentinel_master is None):
        given, missing = (
            ("redis-sentinel", "redis-sentinel-master: NAME")
            if config.redis_sentinel is not None
            else ("redis-sentinel-master", "redis-sentinel: HOST:PORT[,HOST:PORT...]")
        )
        raise ConfigError(given, f"it needs {missing} too (the Sentinels, and the master's name there)")
    if config.redis_sentinel is not None and redis_address(config.redis).tls:
        raise ConfigError(
            "redis-sentinel", "it works with redis:// (not rediss://); put TLS in front of Redis otherwise"
        )
    try:
        read_password(config.redis_password_env, config.redis_password_file)
    except ValueError as exc:
        field = "redis-password-file" if config.redis_password_file is not None else "redis-password-env"
        raise ConfigError(field, str(exc)) from None


def config_from_mapping(mapping: Mapping[str, Any]) -> Config:
    """A Config from YAML-style keys, e.g. ``{"listen": "tcp:0", "backends": ["http://..."]}``."""
    return _finish(_values_from_mapping(mapping, "config"), mapping)


def _read_yaml(path: str) -> Mapping[Any, Any]:
    # Imported here: a powerlb started without --config reads no YAML (import-light start-up).
    import yaml

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
    _check_keys(cli, BY_NAME, "option")
    data = _read_yaml(config_file) if config_file else {}
    values = _values_from_mapping(data, "config")
    for name, raw in cli.items():
        if raw not in (None, [], ()):
            values[BY_NAME[name].attr] = _parse_setting(BY_NAME[name], raw)
    return _finish(values, data)
