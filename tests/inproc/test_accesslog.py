"""The access log: exact combined-format and JSON lines for real requests, one file per instance.

Reopening it on SIGUSR1 under twistd is in tests/process/test_access_log_reopen.py.
"""

from __future__ import annotations

import calendar
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET

from powerlb.accesslog import AccessLog, combined_line, format_iso_time, format_local_time, json_line
from powerlb.config import ConfigError
from tests.support.inproc import exchange, headers_of, origin

#: 24 Nov 2026 12:00:00 UTC, the time the tests' clock shows.
NOON = calendar.timegm((2026, 11, 24, 12, 0, 0))


def event(**fields: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "client": "127.0.0.1",
        "user": None,
        "time": NOON,
        "method": "GET",
        "target": "/x",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 1234,
        "referer": None,
        "user_agent": "curl/8",
        "upstream": "127.0.0.1:9001",
        "upstream_time": 0.0031,
        "cache": "MISS",
        "request_id": None,
    }
    base.update(fields)
    return base


def test_combined_line_is_the_documented_format() -> None:
    assert combined_line(event()) == (
        '127.0.0.1 - - [24/Nov/2026:12:00:00 +0000] "GET /x HTTP/1.1" 200 1234 "-" "curl/8" '
        "upstream=127.0.0.1:9001 upstream_time=0.003 cache=MISS request_id=-\n"
    )
    hit = combined_line(event(upstream=None, upstream_time=None, cache="HIT", referer="http://r/"))
    assert hit.endswith('"http://r/" "curl/8" upstream=- upstream_time=- cache=HIT request_id=-\n')
    assert combined_line(event(cache=None)).endswith(" cache=- request_id=-\n")
    assert combined_line(event(request_id="a b")).endswith(" cache=MISS request_id=a\\x20b\n")


def test_quoted_fields_are_escaped() -> None:
    line = combined_line(event(target='/a"b\\c\x01\xe9', user_agent='x" y\n'))
    assert '"GET /a\\"b\\\\c\\x01\\xe9 HTTP/1.1"' in line
    assert '"x\\" y\\x0a"' in line
    assert line.count("\n") == 1


_QUOTED = r'"((?:[^"\\]|\\.)*)"'
COMBINED = re.compile(
    rf"(\S+) - (\S+) \[([^\]]+)\] {_QUOTED} (\d+) (\d+) {_QUOTED} {_QUOTED} "
    r"upstream=(\S+) upstream_time=(\S+) cache=(\S+) request_id=(\S+)\n"
)


def unescape(text: str) -> str:
    return re.sub(r"\\(x[0-9a-f]{2}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 3 else m[1], text)


#: Field text as the request path makes it: bytes decoded as latin-1.
LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)


@given(LATIN1, st.one_of(st.none(), LATIN1), st.one_of(st.none(), LATIN1))
def test_any_field_gives_one_parseable_line_of_printable_ascii(target: str, referer: Any, agent: Any) -> None:
    line = combined_line(event(target=target, referer=referer, user_agent=agent))
    assert all(" " <= char < "\x7f" for char in line[:-1])
    found = COMBINED.fullmatch(line)
    assert found is not None, line
    assert unescape(found[4]) == f"GET {target} HTTP/1.1"
    assert unescape(found[7]) == ("-" if referer is None else referer)
    assert unescape(found[8]) == ("-" if agent is None else agent)
    parsed = json.loads(json_line(event(target=target, referer=referer, user_agent=agent)))
    assert (parsed["target"], parsed["referer"], parsed["user_agent"]) == (target, referer, agent)


def test_json_line() -> None:
    parsed = json.loads(json_line(event(time=NOON + 0.25)))
    assert parsed == {
        "time": "2026-11-24T12:00:00.250Z",
        "client": "127.0.0.1",
        "user": None,
        "method": "GET",
        "target": "/x",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 1234,
        "referer": None,
        "user_agent": "curl/8",
        "upstream": "127.0.0.1:9001",
        "upstream_time": 0.003,
        "cache": "MISS",
        "request_id": None,
    }


def test_times() -> None:
    assert format_local_time(NOON + 59.9) == "24/Nov/2026:12:00:59 +0000"
    assert format_iso_time(NOON + 0.9999) == "2026-11-24T12:00:00.999Z"


def test_unwritable_file_is_a_config_error(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "no" / "such" / "dir.log"), "combined", Clock())
    with pytest.raises(
        ConfigError, match=r"^access-log: cannot open .*give a writable file, or - for stdout"
    ):
        log.startService()


# --- end to end --------------------------------------------------------------------------

UPSTREAM_TIME = re.compile(r" upstream_time=(\d+\.\d{3}) ")
#: A request id powerlb made (the client sent none).
MADE_ID = re.compile(r"[0-9a-f]{32}")


def made_ids(lines: List[str]) -> List[str]:
    """``lines`` with each request id powerlb made written ``ID``."""
    out = []
    for line in lines:
        head, _, given = line.rpartition(" request_id=")
        assert MADE_ID.fullmatch(given), line
        out.append(f"{head} request_id=ID")
    return out


def logged(lb: Any, path: Path) -> List[str]:
    """The lines of ``lb``'s access log so far."""
    lb.service.access_log.flush()
    return path.read_text().splitlines()


def at_noon(lb: Any) -> None:
    """Make ``lb``'s request outcomes use a clock showing :data:`NOON`."""
    clock = Clock()
    clock.advance(NOON)
    lb.service.outcomes.clock = clock


def gone(request: Any) -> Any:
    """A backend that drops the connection instead of answering."""
    request.channel.transport.abortConnection()
    return NOT_DONE_YET


REQUEST = b"GET %s HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\nReferer: http://r/\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_combined_lines_for_a_miss_a_hit_and_a_502(make_backends, start_powerlb, tmp_path):
    (a,) = make_backends(1)
    a.routes[b"/c"] = origin(b"stored", cache_control=b"max-age=60")
    a.routes[b"/gone"] = gone
    path = tmp_path / "access.log"
    lb = start_powerlb([a], access_log=str(path))
    at_noon(lb)
    miss, hit, failed = [
        (await exchange(lb.port, REQUEST % target))[0] for target in (b"/c", b"/c", b"/gone")
    ]
    assert [headers_of(r)[0] for r in (miss, hit, failed)] == [200, 200, 502]
    lines = made_ids(logged(lb, path))
    times = [UPSTREAM_TIME.search(line) for line in lines]
    assert times[0] is not None and times[1] is None and times[2] is None
    assert 0 <= float(times[0].group(1)) < 5
    lines[0] = lines[0].replace(times[0].group(0), " upstream_time=T ")
    start = '127.0.0.1 - - [24/Nov/2026:12:00:00 +0000] "GET '
    end = '"http://r/" "curl/8"'
    assert lines == [
        f'{start}/c HTTP/1.1" 200 9 {end} upstream={a.url[7:]} upstream_time=T cache=MISS request_id=ID',
        f'{start}/c HTTP/1.1" 200 9 {end} upstream=- upstream_time=- cache=HIT request_id=ID',
        f'{start}/gone HTTP/1.1" 502 {len(headers_of(failed)[2])} {end} '
        f"upstream={a.url[7:]} upstream_time=- cache=MISS request_id=ID",
    ]
    assert headers_of(hit)[1][b"x-cache"] == b"HIT"  # answered on the channel's short way


@pytest_twisted.ensureDeferred
async def test_json_lines(make_backends, start_powerlb, tmp_path):
    (a,) = make_backends(1)
    path = tmp_path / "access.jsonl"
    lb = start_powerlb([a], access_log=str(path), access_log_format="json", cache_size=0)
    at_noon(lb)
    (response,) = await exchange(lb.port, REQUEST % b"/j?q=1")
    (record,) = [json.loads(line) for line in logged(lb, path)]
    upstream_time = record.pop("upstream_time")
    assert MADE_ID.fullmatch(record.pop("request_id"))
    assert isinstance(upstream_time, float) and 0 <= upstream_time < 5
    assert record == {
        "time": "2026-11-24T12:00:00.000Z",
        "client": "127.0.0.1",
        "user": None,
        "method": "GET",
        "target": "/j?q=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": len(headers_of(response)[2]),
        "referer": "http://r/",
        "user_agent": "curl/8",
        "upstream": a.url[7:],
        "cache": "BYPASS",
    }


@pytest_twisted.ensureDeferred
async def test_two_instances_write_their_own_files(make_backends, start_powerlb, tmp_path):
    (a,) = make_backends(1)
    one = start_powerlb([a], access_log=str(tmp_path / "one.log"))
    two = start_powerlb([a], access_log=str(tmp_path / "two.log"))
    await exchange(one.port, REQUEST % b"/one")
    for _ in range(2):
        await exchange(two.port, REQUEST % b"/two")
    first, second = logged(one, tmp_path / "one.log"), logged(two, tmp_path / "two.log")
    assert len(first) == 1 and '"GET /one HTTP/1.1" 200' in first[0]
    assert len(second) == 2 and all('"GET /two HTTP/1.1" 200' in line for line in second)


@pytest_twisted.ensureDeferred
async def test_lines_are_written_when_the_instance_stops(make_backends, start_powerlb, tmp_path):
    (a,) = make_backends(1)
    path = tmp_path / "access.log"
    lb = start_powerlb([a], access_log=str(path))
    await exchange(lb.port, REQUEST % b"/last")
    await lb.service.stopService()
    assert '"GET /last HTTP/1.1" 200' in path.read_text()


@pytest_twisted.ensureDeferred
async def test_no_access_log_by_default(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    assert lb.service.access_log is None and lb.service.outcomes.access is None
    await exchange(lb.port, REQUEST % b"/x")
    assert sum(lb.service.outcomes.counts.values()) == 1
