"""Writing to a TCP connection at once, instead of a reactor round trip later.

A Twisted TCP transport's ``write`` only queues the bytes and asks the
reactor to watch the socket for writability; they go out on the reactor's
next turn, which costs two ``epoll_ctl`` calls, one more event and a
``send``. For a request/response proxy that writes one block per response
(and one per upstream request) that is a third of the reactor's work.

:func:`write_now` sends straight away when the transport has nothing queued,
and hands what the socket did not take (or a transport it cannot send on
directly: TLS, a closing or half-closed connection, anything not plain TCP)
to the transport's own ``writeSequence``, so ordering, flow control, error handling
and buffering stay Twisted's.
"""

from __future__ import annotations

from twisted.internet.tcp import Connection

from powerlb.interfaces import IConnectionTransport


def can_write_now(transport: object) -> bool:
    """Whether :func:`write_now` may send on ``transport`` itself: a connected plain-TCP transport
    with nothing queued (so bytes sent now cannot overtake bytes written before)."""
    return (
        isinstance(transport, Connection)
        and not transport.TLS
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport._writeDisconnected
        and transport._tempDataLen == 0
        and transport.offset == len(transport.dataBuffer)
    )


def write_now(transport: IConnectionTransport, *pieces: bytes) -> None:
    """Write ``pieces`` to ``transport`` in order, sending what the socket takes at once (in one
    ``sendmsg``, never joined: a large body is not copied) when nothing is queued."""
    if can_write_now(transport):
        sock = transport.socket  # type: ignore[attr-defined]  # a tcp.Connection's socket
        try:
            if len(pieces) == 1:
                sent = sock.send(pieces[0])
                if sent == len(pieces[0]):
                    return
            else:
                sent = sock.sendmsg(pieces)
        except OSError:
            sent = 0  # full (EAGAIN), or broken: the transport's own write finds out and reports it
        for index, piece in enumerate(pieces):
            if sent < len(piece):
                pieces = (piece[sent:], *pieces[index + 1 :])
                break
            sent -= len(piece)
        else:
            return
    transport.writeSequence(pieces)
