"""``powerlb-ctl``: a command-line client of the runtime API (see :mod:`powerlb.api`).

    powerlb-ctl backends
    powerlb-ctl --token "$TOKEN" drain 127.0.0.1:9001
    powerlb-ctl pools
    powerlb-ctl backends --pool api

A short-lived process of its own, so it uses blocking ``urllib``. Exit
status: 0 on success, 1 when the API refuses (its message is printed) or
cannot be reached, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from powerlb._version import __version__

DEFAULT_ADMIN = "http://127.0.0.1:8081"
#: Seconds to wait for the admin API.
TIMEOUT = 10.0


class ApiFailure(Exception):
    """The API refused the request, or could not be reached; the message says why."""


#: The port of a backend URL that gives none.
DEFAULT_PORTS = {"http": 80, "https": 443}


def backends_path(pool: Optional[str]) -> str:
    """The API path of the backends of ``pool`` (None: the default pool)."""
    return "backends" if pool is None else f"pools/{quote(pool, safe='')}/backends"


def backend_path(backend: str, pool: Optional[str] = None) -> str:
    """The API path of a backend given as its id (``host:port``) or its URL (``https://host[:port]``),
    in ``pool`` (None: the default pool)."""
    backend_id = backend.rstrip("/")
    scheme, sep, address = backend_id.partition("://")
    if sep and ":" not in address.rpartition("]")[2]:  # a URL without a port
        backend_id = f"{address}:{DEFAULT_PORTS.get(scheme.lower(), 80)}"
    elif sep:
        backend_id = address
    return backends_path(pool) + "/" + quote(backend_id, safe=":[]")


def _set_state(state: str) -> Any:
    """The request of a subcommand that sets a backend's state."""
    return lambda args: ("PATCH", backend_path(args.id, args.pool), {"state": state})


def _add(args: argparse.Namespace) -> Tuple[str, str, Dict[str, Any]]:
    body: Dict[str, Any] = {"url": args.url, "backup": args.backup}
    if args.weight is not None:
        body["weight"] = args.weight
    return "POST", backends_path(args.pool), body


_ID = ("id", {"help": "the backend: HOST:PORT as in its URL"})
_POOL = ("--pool", {"metavar": "NAME", "help": "the backend's pool (default: the default pool)"})
_JSON = ("--json", {"action": "store_true", "help": "print JSON instead of a table"})


#: Subcommand -> (help, its arguments as (name, argparse options), how to build (method, path, body)).
COMMANDS: Dict[str, Any] = {
    "stats": ("show the live figures (JSON)", [], lambda args: ("GET", "stats", None)),
    "backends": (
        "list the backends of a pool (a table; --json for JSON)",
        [_JSON, _POOL],
        lambda args: ("GET", backends_path(args.pool), None),
    ),
    "pools": (
        "list the pools (a table; --json for JSON)",
        [_JSON],
        lambda args: ("GET", "pools", None),
    ),
    "add": (
        "add a backend",
        [
            ("url", {"help": "http://HOST:PORT"}),
            ("--weight", {"type": int, "help": "weight, a whole number >= 1 (default 1)"}),
            ("--backup", {"action": "store_true", "help": "a backup: serves only while no primary can"}),
            _POOL,
        ],
        _add,
    ),
    "remove": (
        "remove a backend (requests in flight finish)",
        [_ID, _POOL],
        lambda args: ("DELETE", backend_path(args.id, args.pool), None),
    ),
    "weight": (
        "set a backend's weight",
        [_ID, ("weight", {"type": int, "help": "a whole number >= 1"}), _POOL],
        lambda args: ("PATCH", backend_path(args.id, args.pool), {"weight": args.weight}),
    ),
    "drain": (
        "no new requests to a backend; those in flight finish, health checks go on",
        [_ID, _POOL],
        _set_state("draining"),
    ),
    "disable": (
        "maintenance: no requests and no health checks for a backend",
        [_ID, _POOL],
        _set_state("disabled"),
    ),
    "enable": ("end draining or maintenance", [_ID, _POOL], _set_state("enabled")),
    "purge": (
        "remove cached responses of a URL (--url) or of every URL starting with a prefix (--prefix)",
        [],
        lambda args: ("POST", "cache/purge", {"url": args.url} if args.url else {"prefix": args.prefix}),
    ),
    "config": ("show the effective configuration (JSON)", [], lambda args: ("GET", "config", None)),
}


def parser() -> argparse.ArgumentParser:
    """The command line of ``powerlb-ctl``."""
    top = argparse.ArgumentParser(
        prog="powerlb-ctl", description="Control a running powerlb via its admin API."
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument(
        "--admin",
        default=os.environ.get("POWERLB_ADMIN", DEFAULT_ADMIN),
        help=f"the admin listener's URL (env POWERLB_ADMIN; default {DEFAULT_ADMIN})",
    )
    top.add_argument(
        "--token",
        default=os.environ.get("POWERLB_ADMIN_TOKEN"),
        help="the admin token, needed for changes (env POWERLB_ADMIN_TOKEN)",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, arguments, _) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        for argument, options in arguments:
            command.add_argument(argument, **options)
        if name == "purge":
            which = command.add_mutually_exclusive_group(required=True)
            which.add_argument("--url", help="an absolute URL as clients request it: http://host/path")
            which.add_argument("--prefix", help="a URL prefix: http://host/img/")
    return top


def call(admin: str, token: Optional[str], method: str, path: str, body: Any = None) -> Any:
    """``method`` ``admin``/api/v1/``path`` with ``body`` as JSON; the JSON answer, or ApiFailure."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{admin.rstrip('/')}/api/v1/{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise ApiFailure(f"{err.code} {err.reason}: {_error_message(err.read())}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ApiFailure(f"cannot reach the admin API at {admin} ({reason})") from None
    except ValueError:
        raise ApiFailure(f"{admin} did not answer JSON; is it powerlb's admin listener?") from None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:200] or "no reason given"


#: The columns of the ``backends`` table: heading and how to show a backend's value.
COLUMNS: List[Tuple[str, Any]] = [
    ("ID", lambda b: b["id"]),
    ("STATE", lambda b: b["state"]),
    ("HEALTH", lambda b: "ejected" if b.get("ejected") else "up" if b["healthy"] else "down"),
    ("WEIGHT", lambda b: b["weight"]),
    ("BACKUP", lambda b: "yes" if b["backup"] else "no"),
    ("IN-FLIGHT", lambda b: b["in_flight"]),
    ("REQUESTS", lambda b: b["requests"]),
    ("FAILURES", lambda b: b["failures"]),
    ("LAST-CHECK", lambda b: b.get("last_check") or "-"),
]


#: The columns of the ``pools`` table.
POOL_COLUMNS: List[Tuple[str, Any]] = [
    ("POOL", lambda p: p["name"] + (" (default)" if p.get("default") else "")),
    ("ALGORITHM", lambda p: p["algorithm"]),
    ("BACKENDS", lambda p: p["backends"]),
    ("HEALTHY", lambda p: p["healthy"]),
]


def format_backends(backends: Sequence[Dict[str, Any]]) -> str:
    """The backends as an aligned text table, one line each under a heading."""
    return format_table(backends, COLUMNS)


def format_table(entries: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, Any]]) -> str:
    """``entries`` as an aligned text table of ``columns``, one line each under a heading."""
    rows = [[heading for heading, _ in columns]]
    rows += [[str(show(entry)) for _, show in columns] for entry in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``powerlb-ctl`` with ``argv`` (default: the command line); the exit status."""
    top = parser()
    args = top.parse_args(argv)
    if not args.admin.startswith(("http://", "https://")):
        top.error(f"--admin {args.admin!r} is not a URL; give e.g. {DEFAULT_ADMIN}")
    method, path, body = COMMANDS[args.command][2](args)
    try:
        answer = call(args.admin, args.token, method, path, body)
    except ApiFailure as failure:
        print(f"powerlb-ctl: {failure}", file=sys.stderr)
        return 1
    if args.command == "backends" and not args.json:
        print(format_backends(answer["backends"]))
    elif args.command == "pools" and not args.json:
        print(format_table(answer["pools"], POOL_COLUMNS))
    else:
        print(json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
