"""The ``UpstreamError`` family: how a request sent to a backend can fail, and what the client gets.

Raised nowhere: each error is handed to a response sink's ``request_failed``
(:class:`powerlb.interfaces.IResponseSink`) by the backend pool
(:mod:`powerlb.upstream`) or the dispatcher (:mod:`powerlb.dispatch`), which
retries the ``retryable`` ones; the client-facing layer answers the last one
with its ``status`` and ``reason`` (:func:`powerlb.responses.error_response`).
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An exchange with a backend failed; ``status`` is what the client should get.

    ``retryable`` is true when the request certainly did not reach the
    backend's application (the connection could not be made, or a reused
    keep-alive connection closed before any response byte), so an idempotent
    request may be sent again elsewhere. ``timeout_kind`` names the time
    limit that ran out (``connect``, ``response``, ``idle``), "" for other failures.
    """

    status = 502
    timeout_kind = ""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ConnectFailed(UpstreamError):
    """The backend could not be reached; nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


class ConnectTimeout(ConnectFailed):
    """The connection to the backend was not made within ``connect_timeout``; nothing was sent."""

    timeout_kind = "connect"


class UpstreamTimeout(UpstreamError):
    """The backend did not answer in time: ``kind`` is ``response`` (no head) or ``idle`` (mid-body)."""

    status = 504

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.timeout_kind = kind


class BackendBusy(UpstreamError):
    """The backend had no connection to spare for the request; nothing was sent."""

    status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


class QueueTimeout(BackendBusy):
    """No connection to the backend freed up within the queue timeout."""


class QueueFull(BackendBusy):
    """The backend's wait queue was full, so the request was refused without waiting."""


class NoBackend(UpstreamError):
    """No healthy backend is left to send the request to."""

    status = 503
