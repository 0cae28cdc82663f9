"""``powerlb-ctl``, run as a real subprocess against a real powerlb."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

import powerlb
from powerlb.ctl import backend_path, format_backends
from tests.support import clean_env, free_port, script
from tests.support.inproc import ADMIN, TOKEN, backends_hit, fetch, origin


class Ran:
    """What one ``powerlb-ctl`` run printed and its exit status."""

    def __init__(self, out: bytes, err: bytes, code: int) -> None:
        self.out = out.decode()
        self.err = err.decode()
        self.code = code

    def json(self) -> Any:
        return json.loads(self.out)


async def ctl(*args: str, admin: Optional[str] = None, token: Optional[str] = None) -> Ran:
    """Run ``powerlb-ctl args`` (without blocking the reactor the powerlb under test runs on);
    ``admin`` and ``token`` go in its environment."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("POWERLB_")}
    if admin is not None:
        env["POWERLB_ADMIN"] = admin
    if token is not None:
        env["POWERLB_ADMIN_TOKEN"] = token
    out, err, code = await getProcessOutputAndValue(script("powerlb-ctl"), args, env=env, reactor=reactor)
    ran = Ran(out, err, code)
    assert "Traceback" not in ran.err, ran.err
    return ran


def ids(backends: List[Any]) -> List[str]:
    return [backend.url.partition("://")[2] for backend in backends]


def test_format_backends_aligns_columns() -> None:
    rows: List[Dict[str, Any]] = [
        {"id": "10.0.0.1:80", "state": "enabled", "healthy": True, "ejected": False, "weight": 1},
        {"id": "[::1]:8080", "state": "disabled", "healthy": False, "ejected": False, "weight": 12},
    ]
    for row in rows:
        row.update(backup=False, in_flight=0, requests=7, failures=0, last_check=None)
    rows[0]["last_check"] = "200"
    assert format_backends(rows).splitlines() == [
        "ID           STATE     HEALTH  WEIGHT  BACKUP  IN-FLIGHT  REQUESTS  FAILURES  LAST-CHECK",
        "10.0.0.1:80  enabled   up      1       no      0          7         0         200",
        "[::1]:8080   disabled  down    12      no      0          7         0         -",
    ]


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ("h:1", "backends/h:1"),
        ("http://h:1", "backends/h:1"),
        ("http://[::1]:80/", "backends/[::1]:80"),
        ("http://h", "backends/h:80"),
        ("https://h", "backends/h:443"),
        ("https://[::1]/", "backends/[::1]:443"),
    ],
)
def test_backend_path(given: str, path: str) -> None:
    assert backend_path(given) == path


@pytest_twisted.ensureDeferred
async def test_reads_table_json_stats_and_config(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b.url + ",weight=2"], admin=ADMIN, admin_token=TOKEN)
    await backends_hit(http, lb.url, 2)
    table = await ctl("--admin", lb.admin_url, "backends")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "HEALTH",
        "WEIGHT",
        "BACKUP",
        "IN-FLIGHT",
        "REQUESTS",
        "FAILURES",
        "LAST-CHECK",
    ]
    assert [line.split()[:7] for line in lines[1:]] == [
        [ids([a])[0], "enabled", "up", "1", "no", "0", "1"],
        [ids([b])[0], "enabled", "up", "2", "no", "0", "1"],
    ]
    listed = await ctl("backends", "--json", admin=lb.admin_url)  # the admin URL from the environment
    assert [x["id"] for x in listed.json()["backends"]] == ids([a, b])
    stats = await ctl("stats", admin=lb.admin_url)
    assert (stats.code, stats.json()["requests"], stats.json()["version"]) == (0, 2, powerlb.__version__)
    config = await ctl("config", admin=lb.admin_url)
    assert config.json()["backends"] == [a.url, b.url + ",weight=2"]
    assert config.json()["admin-token"] == "<redacted>"


def test_backend_path_in_a_pool() -> None:
    assert backend_path("http://h:1", "api") == "pools/api/backends/h:1"


@pytest_twisted.ensureDeferred
async def test_pools_and_backend_commands_with_pool(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    pools = {"default": {"backends": [a.url]}, "api": {"backends": [b.url], "algorithm": "least-connections"}}
    lb = start_powerlb([a], admin=ADMIN, admin_token=TOKEN, pools=pools)
    table = await ctl("pools", admin=lb.admin_url)
    assert [line.split() for line in table.out.splitlines()] == [
        ["POOL", "ALGORITHM", "BACKENDS", "HEALTHY"],
        ["default", "(default)", "round-robin", "1", "1"],
        ["api", "least-connections", "1", "1"],
    ]
    listed = await ctl("backends", "--pool", "api", "--json", admin=lb.admin_url)
    assert [(x["id"], x["pool"]) for x in listed.json()["backends"]] == [(ids([b])[0], "api")]
    added = await ctl("add", c.url, "--pool", "api", admin=lb.admin_url, token=TOKEN)
    assert (added.code, added.json()["pool"]) == (0, "api")
    drained = await ctl("drain", ids([c])[0], "--pool", "api", admin=lb.admin_url, token=TOKEN)
    assert drained.json()["state"] == "draining"
    assert [(x.url, x.state) for x in lb.service.pools["api"].backends] == [
        (b.url, "enabled"),
        (c.url, "draining"),
    ]
    wrong = await ctl("remove", ids([a])[0], "--pool", "nope", admin=lb.admin_url, token=TOKEN)
    assert (wrong.code, wrong.err.strip()) == (
        1,
        "powerlb-ctl: 404 Not Found: no pool 'nope'; the pools are: default, api",
    )


@pytest_twisted.ensureDeferred
async def test_changes(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start_powerlb([a, b], admin=ADMIN, admin_token=TOKEN, algorithm="weighted-round-robin")
    (id_a, id_b, id_c) = ids([a, b, c])

    added = await ctl("--token", TOKEN, "add", c.url, "--weight", "2", admin=lb.admin_url)
    assert (added.code, added.json()["id"], added.json()["weight"]) == (0, id_c, 2)
    assert Counter(await backends_hit(http, lb.url, 8)) == {"a": 2, "b": 2, "c": 4}

    async def change(*args: str) -> Dict[str, Any]:
        ran = await ctl(*args, admin=lb.admin_url, token=TOKEN)  # the token from the environment
        assert ran.code == 0, ran.err
        return ran.json()

    assert (await change("weight", id_a, "3"))["weight"] == 3
    assert (await change("drain", b.url))["state"] == "draining"
    assert (await change("disable", id_c))["state"] == "disabled"
    assert set(await backends_hit(http, lb.url, 4)) == {"a"}
    assert [(x.weight, x.state) for x in lb.service.backends] == [
        (3, "enabled"),
        (1, "draining"),
        (2, "disabled"),
    ]
    assert (await change("enable", id_b))["state"] == "enabled"
    assert await change("remove", id_c) == {"removed": id_c}
    assert ids(lb.service.backends) == [id_a, id_b]
    backup = await change("add", f"http://{id_c}", "--backup")
    assert (backup["backup"], backup["weight"]) == (True, 1)


@pytest_twisted.ensureDeferred
async def test_purge(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    for path in (b"/img/1", b"/img/2"):
        a.routes[path] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a], admin=ADMIN, admin_token=TOKEN)
    for path in ("/img/1", "/img/2"):
        await fetch(http, lb.url + path)
    one = await ctl("purge", "--url", f"{lb.url}/img/1", admin=lb.admin_url, token=TOKEN)
    assert (one.code, one.json()) == (0, {"purged": 1})
    rest = await ctl("purge", "--prefix", f"{lb.url}/img/", admin=lb.admin_url, token=TOKEN)
    assert (rest.code, rest.json()) == (0, {"purged": 1})
    assert (await fetch(http, lb.url + "/img/2")).x_cache == b"MISS"


@pytest_twisted.ensureDeferred
async def test_api_errors_exit_1_with_the_servers_message(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin=ADMIN, admin_token=TOKEN)
    cases: List[Tuple[Tuple[str, ...], Optional[str], str]] = [
        (
            ("drain", ids([a])[0]),
            None,
            "401 Unauthorized: a valid Authorization: Bearer <admin-token> is required",
        ),
        (("drain", ids([a])[0]), "wrong", "401 Unauthorized"),
        (("remove", "127.0.0.1:1"), TOKEN, "404 Not Found: no backend '127.0.0.1:1'; the backends are: "),
        (("weight", ids([a])[0], "0"), TOKEN, "400 Bad Request: weight: "),
        (("add", a.url), TOKEN, f"409 Conflict: backend {a.url.partition('://')[2]} exists"),
        (("purge", "--url", "/relative"), TOKEN, "400 Bad Request: url: '/relative' is not an absolute URL"),
    ]
    for args, token, message in cases:
        ran = await ctl(*args, admin=lb.admin_url, token=token)
        assert (ran.code, ran.out) == (1, ""), (args, ran.out, ran.err)
        assert ran.err.startswith(f"powerlb-ctl: {message}"), (args, ran.err)
        assert ran.err.count("\n") == 1
    assert [(x.weight, x.state) for x in lb.service.backends] == [(1, "enabled")]


@pytest_twisted.ensureDeferred
async def test_unreachable_admin_exits_1():
    admin = f"http://127.0.0.1:{free_port()}"
    ran = await ctl("stats", admin=admin)
    assert ran.code == 1
    assert ran.err.startswith(f"powerlb-ctl: cannot reach the admin API at {admin} (")


@pytest_twisted.ensureDeferred
async def test_version_is_the_packages():
    ran = await ctl("--version")
    assert (ran.code, ran.out) == (0, f"powerlb-ctl {powerlb.__version__}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("weight", "h:1", "heavy"), "argument weight: invalid int value: 'heavy'"),
        (("purge",), "one of the arguments --url --prefix is required"),
        (("purge", "--url", "http://x/", "--prefix", "http://x/"), "not allowed with argument"),
        (("--admin", "127.0.0.1:8081", "stats"), "--admin '127.0.0.1:8081' is not a URL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_usage_errors_exit_2(args: Tuple[str, ...], message: str):
    ran = await ctl(*args)
    assert ran.code == 2
    assert message in ran.err
    assert ran.err.startswith("usage: powerlb-ctl")
