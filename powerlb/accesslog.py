"""The access log: one twisted.logger event per completed client request, written as a line.

Each powerlb instance with ``access-log`` set owns one :class:`AccessLog`:
its :attr:`AccessLog.logger` (namespace :data:`ACCESS_NAMESPACE`) has the
service itself as its only observer, so two instances in one process never
see each other's requests and nothing goes through the global log
publisher. The event's fields (see :func:`combined_line`) become a line in
the combined log format plus the upstream address, upstream time, cache
result and request id, or one JSON object (``access-log-format: json``). Lines are
buffered and written to the file (opened for appending) or to stdout (``-``)
every second, when 64 KiB are pending, on :meth:`AccessLog.reopen` (for
logrotate; ``twistd powerlb`` calls it on SIGUSR1) and when the service stops.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

from powerlb.config import ConfigError

#: The namespace of access-log events.
ACCESS_NAMESPACE = "powerlb.access"

#: The ``log_format`` of access-log events, for observers other than the access log's own.
EVENT_FORMAT = '{client} "{method} {target} {protocol}" {status} {bytes}'

#: Pending bytes that make the access log write at once rather than at the next tick.
FLUSH_SIZE = 64 * 1024
#: Seconds between writes of the pending lines.
FLUSH_INTERVAL = 1.0

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Quoted fields: quote and backslash escaped, control and non-ASCII characters as \\xNN.
_ESCAPES: Dict[int, str] = {code: f"\\x{code:02x}" for code in range(256) if code < 0x20 or code >= 0x7F}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def _quoted(text: Optional[str]) -> str:
    return '"-"' if text is None else '"' + text.translate(_ESCAPES) + '"'


def _bare(text: Optional[str]) -> str:
    """An unquoted field: "-" when absent, no spaces or control characters."""
    if not text:
        return "-"
    return text.translate(_ESCAPES).replace(" ", "\\x20")


def format_local_time(seconds: float) -> str:
    """``24/Nov/2026:12:00:00 +0000``: the combined log format's time, in UTC."""
    t = time.gmtime(seconds)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def format_iso_time(seconds: float) -> str:
    """``2026-11-24T12:00:00.123Z``: ISO 8601 in UTC with milliseconds."""
    whole = int(seconds)
    millis = min(round((seconds - whole) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def combined_line(event: Mapping[str, Any]) -> str:
    """The combined log format line of an access event, with ``upstream=``, ``upstream_time=``, ``cache=``,
    ``request_id=``.

    The event's fields: ``client`` (address), ``user`` (None), ``time``
    (seconds since the epoch), ``method``, ``target``, ``protocol``,
    ``status``, ``bytes`` (body bytes sent), ``referer``, ``user_agent``,
    ``upstream`` (``host:port`` or None), ``upstream_time`` (seconds or
    None), ``cache`` (the ``X-Cache`` result or None), ``request_id`` (the
    request's id, None when it has none). Text fields are
    ``str``; absent ones show as ``-``.
    """
    upstream_time = event["upstream_time"]
    return (
        f"{_bare(event['client'])} - {_bare(event['user'])} [{format_local_time(event['time'])}] "
        f"{_quoted(' '.join((event['method'], event['target'], event['protocol'])))} "
        f"{event['status']} {event['bytes']} {_quoted(event['referer'])} {_quoted(event['user_agent'])} "
        f"upstream={_bare(event['upstream'])} "
        f"upstream_time={'-' if upstream_time is None else format(upstream_time, '.3f')} "
        f"cache={_bare(event['cache'])} request_id={_bare(event.get('request_id'))}\n"
    )


#: The fields of an access event as :func:`json_line` writes them, in order.
JSON_FIELDS = (
    "client",
    "user",
    "method",
    "target",
    "protocol",
    "status",
    "bytes",
    "referer",
    "user_agent",
    "upstream",
    "upstream_time",
    "cache",
    "request_id",
)


def json_line(event: Mapping[str, Any]) -> str:
    """An access event as one JSON object: ``time`` in ISO 8601 (UTC), then :data:`JSON_FIELDS` (null
    when absent; ``upstream_time`` rounded to the millisecond)."""
    record: Dict[str, Any] = {"time": format_iso_time(event["time"])}
    for name in JSON_FIELDS:
        record[name] = event.get(name)
    if record["upstream_time"] is not None:
        record["upstream_time"] = round(record["upstream_time"], 3)
    return json.dumps(record, separators=(",", ":")) + "\n"


#: The line formatter of each ``access-log-format`` (:data:`powerlb.values.ACCESS_LOG_FORMATS`).
FORMATTERS: Dict[str, Callable[[Mapping[str, Any]], str]] = {"combined": combined_line, "json": json_line}


@implementer(ILogObserver)
class AccessLog(Service):
    """One instance's access log: the logger the request path emits to, and the writer of its lines.

    ``path`` is a file (created if missing, appended to) or ``-`` for
    stdout; ``form`` a key of :data:`FORMATTERS`; ``clock`` runs the flush
    timer. The file is opened by :meth:`privilegedStartService` (before
    twistd drops privileges) or :meth:`startService`, and closed by
    :meth:`stopService` after a last write.
    """

    log = Logger()

    def __init__(self, path: str, form: str, clock: IReactorTime, stdout_fd: int = 1) -> None:
        self.path = path
        self.format_line = FORMATTERS[form]
        self.clock = clock
        self._stdout_fd = stdout_fd
        #: What the request path emits to (see :mod:`powerlb.outcomes`).
        self.logger = Logger(namespace=ACCESS_NAMESPACE, source=self, observer=self)
        self._fd: Optional[int] = None
        self._lines: List[str] = []
        self._pending = 0
        self._loop: Optional[LoopingCall] = None

    def __call__(self, event: Dict[str, Any]) -> None:
        """Observe one access event: format it and queue the line."""
        line = self.format_line(event)
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the queued lines now (in one write, so processes sharing the file never split a line)."""
        if not self._lines or self._fd is None:
            return
        data = "".join(self._lines).encode("utf-8")
        self._lines, self._pending = [], 0
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.log.warn("access log {path}: write failed, lines lost: {error}", path=self.path, error=exc)

    def reopen(self) -> None:
        """Write what is queued and open the file again (after logrotate moved it)."""
        self.flush()
        self._close()
        self._open()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        self._open()
        if self._loop is None:
            self._loop = LoopingCall(self.flush)
            self._loop.clock = self.clock
            self._loop.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        self.flush()
        self._close()

    def _open(self) -> None:
        if self._fd is not None:
            return
        if self.path == "-":
            self._fd = self._stdout_fd
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                "access-log",
                f"cannot open {self.path!r} ({exc.strerror}); give a writable file, or - for stdout",
            ) from None

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self.path != "-":
            os.close(fd)
