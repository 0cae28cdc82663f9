"""Tests for the configuration: the value grammar (powerlb.values), the settings table
(powerlb.settings), loading and YAML merging (powerlb.config), the command line
(powerlb.tap.Options) and their error messages."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.backend import BackendSpec
from powerlb.config import ConfigError, build_config, config_from_mapping, config_to_mapping
from powerlb.settings import SETTINGS, Config
from powerlb.tap import Options
from powerlb.values import (
    endpoint_kind,
    format_size,
    parse_admin_endpoint,
    parse_backend,
    parse_duration,
    parse_endpoint,
    parse_networks,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]
B1 = "http://127.0.0.1:9001"


def _settings(config: Config) -> Config:
    """``config`` without its pools and routes (which tests/test_config_routes.py covers)."""
    return dataclasses.replace(config, pools={}, routes=())


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "lb.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def parse_args(args: List[str]) -> Config:
    options = Options()
    options.parseOptions(args)
    assert options.config is not None
    return options.config


def option_error(args: List[str]) -> str:
    """The one line ``twistd powerlb`` exits with for a bad ``args``, between its prefix and suffix."""
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(args)
    text = str(info.value)
    prefix, suffix = "twistd powerlb: ", " (see twistd powerlb --help)"
    assert text.startswith(prefix) and text.endswith(suffix), text
    return text[len(prefix) : -len(suffix)]


# --- parsers ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("65536", 65536),
        ("512B", 512),
        ("1k", 1024),
        ("1K", 1024),
        ("2KB", 2048),
        ("2KiB", 2048),
        ("3m", 3 * 1024**2),
        ("3MB", 3 * 1024**2),
        ("64MiB", 64 * 1024**2),
        ("1.5MiB", 1536 * 1024),
        ("0.5k", 512),
        (".5K", 512),
        ("1g", 1024**3),
        ("2GB", 2 * 1024**3),
        ("1GiB", 1024**3),
        (" 64 MiB ", 64 * 1024**2),
        ("+4k", 4096),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-5MiB", "'-5MiB' is negative; give a size such as 64MiB"),
        ("-1", "is negative"),
        ("", "is not a size; give a size such as 64MiB"),
        ("lots", "is not a size"),
        ("1.2.3K", "is not a size"),
        ("5 M B", "is not a size"),
        ("1e6", "is not a size"),
        ("5TiB", "unknown unit 'TiB'; use one of: B, K, KB, KiB, M, MB, MiB, G, GB, GiB"),
        ("nan", "is not a size"),
        ("1" * 30, "is not a size"),
    ],
)
def test_parse_size_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**62))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (1000, "1000"), (1024, "1KiB"), (64 * 1024**2, "64MiB"), (3 * 1024**3, "3GiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0.0),
        ("2", 2.0),
        ("2.5", 2.5),
        ("2s", 2.0),
        ("2S", 2.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        (" 3 s ", 3.0),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "'-1' is negative; give a duration such as 2s or 500ms"),
        ("-500ms", "is negative"),
        ("soon", "is not a duration; give a duration such as 2s"),
        ("", "is not a duration"),
        ("2 days", "unknown unit 'days'"),
        ("inf", "is not a duration"),
        ("5us", "unknown unit 'us'; use one of: ms, s, m, h"),
    ],
)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(text)


@given(st.text(max_size=40))
def test_parse_size_returns_non_negative_int_or_value_error(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int)
    assert value >= 0


@given(st.text(alphabet="0123456789.+-kKmMgGiBbsh \t", max_size=30) | st.text(max_size=30))
def test_parse_duration_returns_non_negative_float_or_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert isinstance(value, float)
    assert 0 <= value < float("inf")


@given(st.text(alphabet="0123456789.+-kKmMgGiBb \t", max_size=30))
def test_parse_size_number_like_text(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int)
    assert value >= 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (B1, BackendSpec(B1, "127.0.0.1", 9001, 1)),
        ("http://host:9002,weight=3", BackendSpec("http://host:9002", "host", 9002, 3)),
        ("http://[::1]:9001", BackendSpec("http://[::1]:9001", "::1", 9001, 1)),
        ("http://example.com", BackendSpec("http://example.com:80", "example.com", 80, 1)),
        ("http://Example.COM:81/", BackendSpec("http://example.com:81", "example.com", 81, 1)),
        ("HTTP://h:1, weight = 2", BackendSpec("http://h:1", "h", 1, 2)),
        (
            "https://example.com",
            BackendSpec("https://example.com:443", "example.com", 443, 1, scheme="https"),
        ),
        (
            "HTTPS://127.0.0.1:8443,backup",
            BackendSpec("https://127.0.0.1:8443", "127.0.0.1", 8443, 1, True, "https"),
        ),
        ("https://[::1]:9443,weight=2", BackendSpec("https://[::1]:9443", "::1", 9443, 2, scheme="https")),
    ],
)
def test_parse_backend(text: str, expected: BackendSpec) -> None:
    assert parse_backend(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("htp://x:1", "'htp://x:1' is not an http:// URL; write http://HOST:PORT[,weight=N]"),
        ("127.0.0.1:9001", "is not an http:// URL; write http://HOST:PORT"),
        (
            "ftp://x:1",
            "'ftp://x:1' is not an http:// URL; write http://HOST:PORT[,weight=N][,backup] (https://",
        ),
        ("https://x:1/app", "has a path; backends take no path"),
        ("https://x:0", "has port 0"),
        ("http://x:1/app", "has a path; backends take no path, write http://HOST:PORT"),
        ("http://x:1?a=b", "has a path"),
        ("http://x:1,weight=0", "has weight '0'; give a whole number >= 1"),
        ("http://x:1,weight=-2", "has weight '-2'; give a whole number >= 1"),
        ("http://x:1,weight=heavy", "has weight 'heavy'"),
        ("http://x:1,weight=1.5", "has weight '1.5'"),
        ("http://x:1,weight=2,weight=3", "gives the weight twice; give ,weight=N once"),
        ("http://x:1,backup=1", "unknown option 'backup=1'; the options are ,weight=N and ,backup"),
        ("http://x:1,weight", "unknown option 'weight'"),
        ("http://x:port", "has a bad address"),
        ("http://x:70000", "has a bad address"),
        ("http://x:0", "has port 0; give the port the backend listens on"),
        ("http://[::1:9001", "has a bad address"),
        ("http://:9001", "has no host"),
        ("http://u:p@x:1", "contains credentials"),
    ],
)
def test_parse_backend_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_backend(text)
    assert reason in str(info.value)


# --- endpoints ---


@pytest.mark.parametrize("text", ["tcp:8080", "tcp:0:interface=127.0.0.1", "tcp6:8080", "unix:/x"])
def test_parse_endpoint_accepts(text: str) -> None:
    assert parse_endpoint(text) == text


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("tcpp:8080", "(Unknown endpoint type: 'tcpp')"),
        ("tcp:abc", "invalid literal"),
        ("tcp:8080:colour=red", "colour"),
        ("ssl:8443:privateKey=/nonexistent/key.pem", "/nonexistent/key.pem"),
    ],
)
def test_parse_endpoint_rejects(text: str, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text)
    message = str(info.value)
    assert message.startswith(f"{text!r} is not a Twisted server endpoint (")
    assert detail in message
    assert message.endswith("; e.g. tcp:8080 or ssl:8443:privateKey=key.pem")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:9000", "tcp:9000:interface=127.0.0.1"),
        ("tcp:port=9000", "tcp:port=9000:interface=127.0.0.1"),
        ("tcp6:9000", r"tcp6:9000:interface=\:\:1"),
        ("tcp:9000:interface=0.0.0.0", "tcp:9000:interface=0.0.0.0"),
        ("tcp:9000:backlog=5:interface=10.0.0.1", "tcp:9000:backlog=5:interface=10.0.0.1"),
        ("unix:/run/powerlb-admin.sock", "unix:/run/powerlb-admin.sock"),
    ],
)
def test_admin_endpoint_defaults_to_loopback(text: str, expected: str) -> None:
    assert parse_admin_endpoint(text) == expected


def test_admin_endpoint_rejects_bad_string() -> None:
    with pytest.raises(ValueError, match="'tcpx:9000' is not a Twisted server endpoint"):
        parse_admin_endpoint("tcpx:9000")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("tcp:8080", "tcp"),
        (" TCP6 :port=8080", "tcp6"),
        ("ssl:8443:privateKey=key.pem", "ssl"),
        ("unix:/run/lb.sock", "unix"),
        ("systemd:domain=INET:index=0", "systemd"),
        ("8080", "8080"),
    ],
)
def test_endpoint_kind(text: str, kind: str) -> None:
    assert endpoint_kind(text) == kind


def test_no_reactor_installed_as_side_effect() -> None:
    code = textwrap.dedent(
        """
        import sys
        from powerlb.config import build_config
        from powerlb.tap import Options
        config = build_config(
            {"backend": ["http://127.0.0.1:9001"], "listen": "tcp:0", "admin": "tcp:0"}
        )
        assert config.admin == "tcp:0:interface=127.0.0.1", config
        try:
            build_config({"backend": ["http://127.0.0.1:9001"], "listen": "tcpp:1"})
        except ValueError:
            pass
        Options().parseOptions(["--backend", "http://127.0.0.1:9001"])
        assert "twisted.internet.reactor" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- the option table and Options ---


def test_option_table_matches_config() -> None:
    attrs = [setting.attr for setting in SETTINGS]
    # pools and routes are sections of their own (powerlb.routeconfig), not settings.
    assert sorted([*attrs, "pools", "routes"]) == sorted(Config.__dataclass_fields__)
    assert len(set(attrs)) == len(attrs)


def test_options_long_names() -> None:
    long_names = {row[0] for row in Options.optParameters} | {"backend", "dns"}
    assert long_names == {
        "listen",
        "http2",
        "backend",
        "dns",
        "srv",
        "dns-resolver",
        "dns-min-ttl",
        "dns-max-ttl",
        "algorithm",
        "hash-key",
        "hash-balance-factor",
        "sticky-cookie",
        "health-check",
        "health-path",
        "health-interval",
        "health-timeout",
        "health-rise",
        "health-fall",
        "cache-size",
        "cache-max-object",
        "cache-targeted-header",
        "cache-grace",
        "cache-lock-timeout",
        "purge-allow",
        "trusted-proxies",
        "request-id-header",
        "redis",
        "redis-key-prefix",
        "redis-timeout",
        "redis-password-env",
        "redis-password-file",
        "redis-sentinel",
        "redis-sentinel-master",
        "workers",
        "retries",
        "outlier-failures",
        "outlier-backoff",
        "outlier-statuses",
        "outlier-max-ejection",
        "slow-start",
        "response-timeout",
        "connect-timeout",
        "idle-timeout",
        "tunnel-idle-timeout",
        "client-timeout",
        "max-body",
        "max-header-size",
        "max-headers",
        "max-url-length",
        "max-connections",
        "backend-max-connections",
        "backend-queue-timeout",
        "drain-timeout",
        "keepalive-timeout",
        "backend-ca-file",
        "admin",
        "admin-token",
        "access-log",
        "access-log-format",
        "config",
    }


def test_help_shows_defaults_from_config() -> None:
    text = "".join(str(Options()).split())  # help lines wrap anywhere, even at hyphens
    assert "--backend=" in text
    assert "[default:64MiB]" in text
    assert "[default:tcp:8080]" in text
    assert "[default:round-robin]" in text


def test_options_defaults() -> None:
    config = parse_args(["--backend", B1])
    assert _settings(config) == Config(backends=(parse_backend(B1),))
    assert config.listen == "tcp:8080"
    assert config.cache_size == 64 * 1024 * 1024
    assert config.cache_max_object == 1024 * 1024
    assert config.admin is None
    assert config.admin_token is None
    assert config.access_log is None


def test_options_every_option() -> None:
    config = parse_args(
        [
            "--listen=tcp:9090",
            "--backend",
            B1,
            "--backend",
            "http://[::1]:9002,weight=4",
            "--algorithm",
            "least-connections",
            "--health-path",
            "/ping",
            "--health-interval",
            "5s",
            "--health-timeout",
            "750ms",
            "--health-rise",
            "4",
            "--health-fall",
            "5",
            "--cache-size",
            "0",
            "--cache-max-object",
            "256K",
            "--response-timeout",
            "1m",
            "--connect-timeout",
            "2.5",
            "--keepalive-timeout",
            "90",
            "--admin",
            "tcp:9001",
            "--admin-token",
            "s3cret",
            "--access-log",
            "-",
        ]
    )
    assert _settings(config) == Config(
        listen="tcp:9090",
        backends=(
            BackendSpec(B1, "127.0.0.1", 9001, 1),
            BackendSpec("http://[::1]:9002", "::1", 9002, 4),
        ),
        algorithm="least-connections",
        health_path="/ping",
        health_interval=5.0,
        health_timeout=0.75,
        health_rise=4,
        health_fall=5,
        cache_size=0,
        cache_max_object=256 * 1024,
        response_timeout=60.0,
        connect_timeout=2.5,
        keepalive_timeout=90.0,
        admin="tcp:9001:interface=127.0.0.1",
        admin_token="s3cret",
        access_log="-",
    )


@pytest.mark.parametrize(
    "name",
    [
        "round-robin",
        "weighted-round-robin",
        "least-connections",
        "random-two-choices",
        "consistent-hash",
        "source-hash",
    ],
)
def test_every_algorithm_accepted(name: str) -> None:
    assert parse_args(["--backend", B1, "--algorithm", name]).algorithm == name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "backend: no backends given; add --backend http://HOST:PORT"),
        (
            ["--backend", "htp://x:1"],
            "backend: 'htp://x:1' is not an http:// URL; write http://HOST:PORT[,weight=N]",
        ),
        (["--backend", B1, "--cache-size", "-5MiB"], "cache-size: '-5MiB' is negative; give a"),
        (["--backend", B1, "--algorithm", "fastest"], "algorithm: unknown algorithm 'fastest'"),
        (
            ["--backend", B1, "--listen", "tcpp:8080"],
            "listen: 'tcpp:8080' is not a Twisted server endpoint (Unknown endpoint type:"
            " 'tcpp'); e.g. tcp:8080 or ssl:8443:privateKey=key.pem",
        ),
        (["--backend", B1, "--health-path", "health"], "health-path: 'health' is not a URL path"),
        (["--backend", B1, "--health-interval", "0"], "health-interval: '0' must be more than"),
        (["--backend", B1, "--health-timeout", "-1s"], "health-timeout: '-1s' is negative"),
        (["--backend", B1, "--health-rise", "0"], "health-rise: '0' must be more than zero"),
        (["--backend", B1, "--health-fall", "two"], "health-fall: 'two' is not a whole number"),
        (["--backend", B1, "--cache-max-object", "0"], "cache-max-object: '0' must be more"),
        (["--backend", B1, "--response-timeout", "x"], "response-timeout: 'x' is not a duration"),
        (["--backend", B1, "--connect-timeout", "0ms"], "connect-timeout: '0ms' must be more"),
        (["--backend", B1, "--keepalive-timeout", "1y"], "keepalive-timeout: '1y' has unknown"),
        (["--backend", B1, "--admin", "tcp:abc"], "admin: 'tcp:abc:interface=127.0.0.1' is not"),
        (["--backend", B1, "--admin-token", ""], "admin-token: an empty value is not allowed"),
        (["--backend", B1, "--access-log", ""], "access-log: an empty value is not allowed"),
        (
            ["--backend", B1, "--access-log-format", "clf"],
            "access-log-format: unknown format 'clf'; choose one of: combined, json",
        ),
        (["--backend", B1, "--config", "/nonexistent.yaml"], "config: cannot read"),
    ],
)
def test_options_errors_exit_with_one_line(args: List[str], message: str) -> None:
    text = option_error(args)
    assert text.startswith(message)
    assert "\n" not in text
    assert ";" in text  # the fix follows the problem


def test_algorithm_error_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"backend": [B1], "algorithm": "fastest"})
    assert info.value.field == "algorithm"
    assert info.value.problem == (
        "unknown algorithm 'fastest'; choose one of: consistent-hash, least-connections, "
        "random-two-choices, round-robin, source-hash, weighted-round-robin"
    )
    assert str(info.value) == f"algorithm: {info.value.problem}"


def test_config_error_is_value_error_and_one_line() -> None:
    err = ConfigError("listen", "bad\nthing;\n  fix it")
    assert isinstance(err, ValueError)
    assert str(err) == "listen: bad thing; fix it"
    assert (err.field, err.problem) == ("listen", "bad thing; fix it")


# --- YAML and precedence ---

FULL_YAML = """\
listen: tcp:7070
backends:
  - http://127.0.0.1:9001
  - url: http://127.0.0.1:9002
    weight: 5
  - {url: "http://[::1]:9003"}
algorithm: source-hash
health-path: /status
health-interval: 3
health-timeout: 0.5
health-rise: 1
health-fall: 2
cache-size: 16MiB
cache-max-object: 65536
cache-sweep-interval: 30s
response-timeout: 10s
connect-timeout: 1s
keepalive-timeout: 15
keepalive-max-idle: 0
admin: unix:/tmp/powerlb-admin.sock
admin-token: token
access-log: /var/log/powerlb.log
"""


def test_yaml_every_key(tmp_path: Path) -> None:
    config = build_config({}, write_yaml(tmp_path, FULL_YAML))
    assert _settings(config) == Config(
        listen="tcp:7070",
        backends=(
            BackendSpec(B1, "127.0.0.1", 9001, 1),
            BackendSpec("http://127.0.0.1:9002", "127.0.0.1", 9002, 5),
            BackendSpec("http://[::1]:9003", "::1", 9003, 1),
        ),
        algorithm="source-hash",
        health_path="/status",
        health_interval=3.0,
        health_timeout=0.5,
        health_rise=1,
        health_fall=2,
        cache_size=16 * 1024**2,
        cache_max_object=65536,
        cache_sweep_interval=30.0,
        response_timeout=10.0,
        connect_timeout=1.0,
        keepalive_timeout=15.0,
        keepalive_max_idle=0,
        admin="unix:/tmp/powerlb-admin.sock",
        admin_token="token",
        access_log="/var/log/powerlb.log",
    )


def test_config_to_mapping_writes_what_the_file_reads(tmp_path: Path) -> None:
    config = build_config({}, write_yaml(tmp_path, FULL_YAML + "purge-allow: 10.0.0.0/8, ::1\n"))
    written = config_to_mapping(config, redact=False)
    assert list(written) == [setting.key for setting in SETTINGS]
    assert written["backends"] == [B1, "http://127.0.0.1:9002,weight=5", "http://[::1]:9003"]
    assert (written["health-timeout"], written["cache-size"], written["health-rise"]) == ("0.5s", "16MiB", 1)
    assert (written["purge-allow"], written["admin-token"]) == ("10.0.0.0/8,::1/128", "token")
    assert config_from_mapping(written) == config
    assert config_to_mapping(config)["admin-token"] == "<redacted>"
    defaults = config_from_mapping({"backends": [f"{B1},backup"]})
    assert config_from_mapping(config_to_mapping(defaults, redact=False)) == defaults
    assert (config_to_mapping(defaults)["admin-token"], config_to_mapping(defaults)["purge-allow"]) == (
        None,
        "",
    )


@given(
    st.decimals(min_value=0, max_value=10**9, places=4).map(str),
    st.sampled_from(["", "s", "ms", "m", "h"]),
)
def test_durations_are_written_exactly(number: str, unit: str) -> None:
    (setting,) = [setting for setting in SETTINGS if setting.key == "cache-grace"]
    seconds = parse_duration(number + unit)
    written = setting.written(seconds)
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?s", written)
    assert parse_duration(written) == seconds


def test_yaml_null_turns_optional_settings_off(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"backends: [{B1}]\nadmin: null\naccess-log:\nadmin-token: ~\n")
    config = build_config({}, path)
    assert (config.admin, config.access_log, config.admin_token) == (None, None, None)


def test_precedence_defaults_yaml_cli(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """\
        listen: tcp:7070
        backends: ["http://10.0.0.1:80", "http://10.0.0.2:80"]
        health-rise: 5
        cache-size: 1MiB
        """,
    )
    from_yaml = parse_args(["--config", path, "--cache-size", "2MiB"])
    assert from_yaml.listen == "tcp:7070"  # YAML over default
    assert from_yaml.health_rise == 5
    assert from_yaml.cache_size == 2 * 1024**2  # command line over YAML
    assert from_yaml.health_fall == 3  # default kept
    assert [b.host for b in from_yaml.backends] == ["10.0.0.1", "10.0.0.2"]

    replaced = parse_args(["--config", path, "--backend", B1])
    assert replaced.backends == (parse_backend(B1),)  # --backend replaces the YAML list
    assert replaced.listen == "tcp:7070"


def test_build_config_ignores_options_not_given(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"backends: [{B1}]\nalgorithm: least-connections\n")
    config = build_config({"algorithm": None, "backend": [], "listen": "tcp:1"}, path)
    assert config.algorithm == "least-connections"
    assert config.listen == "tcp:1"
    assert config.backends == (parse_backend(B1),)


def test_build_config_rejects_unknown_cli_name() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"backend": [B1], "keepalive-max-idle": "3"})
    assert info.value.field == "option"
    assert "unknown key 'keepalive-max-idle'" in info.value.problem


def test_config_from_mapping() -> None:
    config = config_from_mapping(
        {"listen": "tcp:0", "backends": [B1, {"url": "http://h:2", "weight": 2}], "cache-size": 0}
    )
    assert config.listen == "tcp:0"
    assert config.backends == (parse_backend(B1), BackendSpec("http://h:2", "h", 2, 2))
    assert config.cache_size == 0
    assert config.health_interval == 2.0


@pytest.mark.parametrize(
    ("mapping", "field", "problem"),
    [
        ({"backends": [B1], "health_path": "/x"}, "config", "unknown key 'health_path'"),
        ({"backend": [B1]}, "config", "unknown key 'backend'; valid keys are: listen, backends"),
        ({"backends": B1}, "backend", "is not a list; give a YAML list"),
        ({"backends": []}, "backend", "no backends given; add --backend http://HOST:PORT"),
        (
            {"backends": ["http://h:80", "http://H"]},
            "backend",
            "http://h:80 and http://h:80 are the same server h:80; give each backend once",
        ),
        (
            {"backends": ["http://h:8443", "https://h:8443,weight=2"]},
            "backend",
            "http://h:8443 and https://h:8443 are the same server h:8443; give each backend once",
        ),
        ({"backends": [42]}, "backend", "42 is not a backend; write http://HOST:PORT"),
        ({"backends": [{"weight": 2}]}, "backend", "has no url string; give url: http://"),
        ({"backends": [{"url": B1, "wieght": 2}]}, "backend", "unknown key 'wieght'"),
        ({"backends": [{"url": B1, "weight": 0}]}, "backend", "has weight '0'"),
        ({"backends": [{"url": B1, "weight": True}]}, "backend", "True is not a single value"),
        ({"backends": [B1], "health-rise": True}, "health-rise", "True is not a single value"),
        ({"backends": [B1], "listen": ["tcp:1"]}, "listen", "is not a single value"),
        ({"backends": [B1], "listen": None}, "listen", "None is not a single value"),
        ({"backends": [B1], "cache-size": -5}, "cache-size", "'-5' is negative"),
        ({"backends": [B1], "health-interval": 1e-9}, "health-interval", "is not a duration"),
        ({"backends": [B1], "keepalive-max-idle": -1}, "keepalive-max-idle", "'-1' is negative"),
        ({"backends": [B1], "cache-sweep-interval": 0}, "cache-sweep-interval", "more than zero"),
    ],
)
def test_config_from_mapping_errors(mapping: Dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(mapping)
    assert info.value.field == field
    assert problem in info.value.problem
    assert ";" in info.value.problem


def test_unknown_yaml_key_lists_valid_keys(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"backends: [{B1}]\ncache_size: 1MiB\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, path)
    assert info.value.field == "config"
    valid = ", ".join([*(setting.key for setting in SETTINGS), "pools", "routes"])
    assert info.value.problem == f"unknown key 'cache_size'; valid keys are: {valid}"
    assert "cache-size" in valid and "backends" in valid and "keepalive-max-idle" in valid


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- http://a:1\n", "holds a list, not a mapping; write 'key: value' lines"),
        ("just text\n", "holds a str, not a mapping"),
        ("listen: tcp:1\nbackends: [http://a:1\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_config({}, path)
    assert info.value.field == "config"
    assert problem in info.value.problem
    assert repr(path) in info.value.problem


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "listen: tcp:1\nbackends:\n  - http://a:1\n bad: [\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, path)
    assert "at line 4, column" in info.value.problem
    assert info.value.problem.endswith("; fix the syntax there")
    assert "\n" not in str(info.value)


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "")
    with pytest.raises(ConfigError, match="no backends given"):
        build_config({}, path)
    assert _settings(build_config({"backend": [B1]}, path)) == Config(backends=(parse_backend(B1),))


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        build_config({}, path)
    assert info.value.field == "config"
    assert info.value.problem == (
        f"cannot read {path!r} (No such file or directory); give the path of a readable YAML file"
    )


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config: cannot read .*\(Is a directory\)"):
        build_config({}, str(tmp_path))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"backends: [{B1}]\n")
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match=r"config: cannot read .*\(Permission denied\)"):
        build_config({}, path)


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.listen = "tcp:1"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1", ("127.0.0.1/32",)), ("10.1.2.3/8, ::1", ("10.0.0.0/8", "::1/128")), ("", ())],
)
def test_parse_networks(text: str, expected: tuple) -> None:
    assert parse_networks(text) == expected


def test_bad_purge_allow_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^purge-allow: 'example\.com' is not an IP address"):
        build_config({"backend": ["http://127.0.0.1:9001"], "purge-allow": "example.com"})


def test_bad_targeted_header_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^cache-targeted-header: 'CDN Cache' is not a header name"):
        config_from_mapping({"backends": ["http://127.0.0.1:9001"], "cache-targeted-header": "CDN Cache"})


def test_backup_backends_from_command_line_and_yaml(tmp_path: Path) -> None:
    assert parse_backend("http://127.0.0.1:9003,backup").backup
    assert parse_backend("http://127.0.0.1:9003,weight=2,backup") == parse_backend(
        "http://127.0.0.1:9003,backup,weight=2"
    )
    assert not parse_backend("http://127.0.0.1:9003").backup
    path = write_yaml(tmp_path, "backends:\n  - {url: 'http://127.0.0.1:9003', backup: true}\n")
    assert build_config({}, path).backends[0].backup


def test_bad_backup_flag_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^backend: .*not true or false"):
        config_from_mapping({"backends": [{"url": "http://127.0.0.1:9003", "backup": "maybe"}]})
    with pytest.raises(ConfigError, match=r"^backend: .*backup=1.*options are ,weight=N and ,backup"):
        build_config({"backend": ["http://127.0.0.1:9003,backup=1"]})


# --- hashing and sticky sessions ---


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ("client", 0.0, None)),
        (["--hash-key", "uri"], ("uri", 0.0, None)),
        (["--hash-key", "Header:X-User", "--hash-balance-factor", "1.25"], ("header:x-user", 1.25, None)),
        (["--hash-key", "cookie:Session", "--hash-balance-factor", "off"], ("cookie:Session", 0.0, None)),
        (["--hash-balance-factor", "0", "--sticky-cookie", "lb"], ("client", 0.0, "lb")),
    ],
)
def test_hashing_settings(args: List[str], expected: tuple) -> None:
    config = parse_args(["--backend", B1, "--algorithm", "consistent-hash", *args])
    assert (config.hash_key, config.hash_balance_factor, config.sticky_cookie) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--hash-key", "host"],
            "hash-key: 'host' is not a hash key; write client, uri, host-uri, header:NAME or cookie:NAME",
        ),
        (["--hash-key", "header:"], "hash-key: 'header:' has no valid header name after 'header:'"),
        (["--hash-key", "cookie:a b"], "hash-key: 'cookie:a b' has no valid cookie name after 'cookie:'"),
        (["--hash-balance-factor", "1"], "hash-balance-factor: '1' must be more than 1"),
        (["--hash-balance-factor", "0.5"], "hash-balance-factor: '0.5' must be more than 1"),
        (["--hash-balance-factor", "-2"], "hash-balance-factor: '-2' is not a number"),
        (["--hash-balance-factor", "lots"], "hash-balance-factor: 'lots' is not a number"),
        (["--sticky-cookie", "a;b"], "sticky-cookie: 'a;b' is not a cookie name; write e.g. lb"),
    ],
)
def test_hashing_setting_errors(args: List[str], message: str) -> None:
    text = option_error(["--backend", B1, "--algorithm", "consistent-hash", *args])
    assert text.startswith(message)
    assert ";" in text


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"hash-key": "uri"}, "hash-key"),
        ({"hash-balance-factor": 1.5}, "hash-balance-factor"),
    ],
)
def test_hashing_settings_need_a_hashing_algorithm(mapping: Dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"backends": [B1], "algorithm": "round-robin", **mapping})
    assert info.value.field == field
    assert info.value.problem == (
        f"only consistent-hash uses it, not round-robin; set algorithm: consistent-hash or leave {field} out"
    )
    # source-hash is consistent-hash under its old name
    config = config_from_mapping({"backends": [B1], "algorithm": "source-hash", **mapping})
    assert config.algorithm == "source-hash"


def test_sticky_cookie_goes_with_any_algorithm(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "backends: [http://a:1]\nalgorithm: least-connections\nsticky-cookie: srv\n")
    config = build_config({}, path)
    assert (config.algorithm, config.sticky_cookie) == ("least-connections", "srv")


# --- health checks and outlier detection ---


def test_health_and_outlier_defaults() -> None:
    """No health-path: active checks are TCP connects; only gateway failures count; half a pool at most."""
    config = config_from_mapping({"backends": [B1]})
    assert (config.health_check, config.health_path) == (True, None)
    assert (config.outlier_statuses, config.outlier_max_ejection) == (((502, 504),), 50)
    written = config_to_mapping(config)
    assert (written["health-check"], written["health-path"]) == ("on", None)
    assert (written["outlier-statuses"], written["outlier-max-ejection"]) == ("502-504", "50%")


@pytest.mark.parametrize(
    ("yaml_text", "attr", "value"),
    [
        ("health-check: off", "health_check", False),
        ("health-check: on", "health_check", True),
        ("health-check: no", "health_check", False),
        ("health-check: true", "health_check", True),
        ("health-check: 'OFF'", "health_check", False),
        ("health-path: /healthz", "health_path", "/healthz"),
        ("health-path: ~", "health_path", None),
        ("outlier-statuses: 500-599", "outlier_statuses", ((500, 599),)),
        ("outlier-statuses: 503", "outlier_statuses", ((503, 503),)),
        ("outlier-statuses: 429, 502-504, 500-501", "outlier_statuses", ((429, 429), (500, 504))),
        ("outlier-statuses: off", "outlier_statuses", ()),
        ("outlier-max-ejection: 30%", "outlier_max_ejection", 30),
        ("outlier-max-ejection: 100", "outlier_max_ejection", 100),
        ("outlier-max-ejection: 0%", "outlier_max_ejection", 0),
    ],
)
def test_health_and_outlier_settings_from_yaml(tmp_path: Path, yaml_text: str, attr: str, value: Any) -> None:
    config = build_config({}, write_yaml(tmp_path, f"backends: [{B1}]\n{yaml_text}\n"))
    assert getattr(config, attr) == value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--health-check", "maybe"], "health-check: 'maybe' is neither on nor off; write on or off"),
        (["--outlier-statuses", "5xx"], "outlier-statuses: '5xx' is not a status or a range of them;"),
        (["--outlier-statuses", "504-502"], "outlier-statuses: '504-502' runs backwards; write the lower"),
        (["--outlier-statuses", "200-599"], "outlier-statuses: '200-599' is outside 400-599;"),
        (["--outlier-max-ejection", "150%"], "outlier-max-ejection: '150%' is not a percentage from 0"),
        (["--outlier-max-ejection", "half"], "outlier-max-ejection: 'half' is not a percentage"),
    ],
)
def test_health_and_outlier_setting_errors(args: List[str], message: str) -> None:
    assert option_error(["--backend", B1, *args]).startswith(message)


def test_health_and_outlier_options_on_the_command_line() -> None:
    config = parse_args(
        ["--backend", B1, "--health-check=off", "--outlier-statuses=500-599", "--outlier-max-ejection=25%"]
    )
    assert (config.health_check, config.outlier_statuses, config.outlier_max_ejection) == (
        False,
        ((500, 599),),
        25,
    )


def test_help_says_what_health_checks_probe() -> None:
    text = " ".join(str(Options()).split())
    assert "TCP connect" in text
    assert "HTTP GET" in text
    assert "--health-check=" in text and "--outlier-statuses=" in text and "--outlier-max-ejection=" in text


def test_lb_yaml_keeps_http_checks_for_the_demo_backends() -> None:
    """``make run`` (lb.yaml) probes /health, which the demo backends serve."""
    config = build_config({}, str(ROOT / "lb.yaml"))
    assert (config.health_check, config.health_path) == (True, "/health")
