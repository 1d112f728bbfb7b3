"""What keeps the webhook's memory and threads bounded whatever clients send: a byte budget
shared by the requests holding bodies, socket reads that end by one deadline (and after a
number of bytes) however slowly the bytes trickle in, and a cap on the connections served at
once that idle connections cannot hold against new ones."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class ByteBudget:
    """Bytes that requests hold between them, up to ``limit``: a request holds its share
    before it reads or parses a body, and gives it back when it is answered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, size: int, wait: float = 0.0) -> Iterator[bool]:
        """Holds ``size`` bytes while the block runs: yields True once there is room, False
        when there was none within ``wait`` seconds (nothing held then)."""
        with self._room:
            held = self._room.wait_for(lambda: self._held + size <= self.limit, wait)
            if held:
                self._held += size
        try:
            yield held
        finally:
            if held:
                with self._room:
                    self._held -= size
                    self._room.notify_all()


class ReadLimitExceeded(http.client.HTTPException):
    """More bytes came than :meth:`DeadlineReader.expect` allowed. An HTTPException, so that
    ``http.server`` answers 431 when it happens while it reads the headers."""


class DeadlineReader(io.RawIOBase):
    """A socket's reads, for an ``io.BufferedReader``: each ends by the deadline set with
    :meth:`expect`, however often a few bytes arrive (a socket timeout alone starts again with
    every byte, so a client dripping bytes could hold the connection for ever)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = time.monotonic()
        self._left: int | None = None

    def expect(self, seconds: float, at_most: int | None = None) -> None:
        """From now on, reads end ``seconds`` from now, and after ``at_most`` more bytes
        (:class:`ReadLimitExceeded`); ``None``: no byte limit."""
        self._deadline = time.monotonic() + seconds
        self._left = at_most

    def lift_byte_limit(self) -> None:
        """Read any number of bytes, still by the deadline."""
        self._left = None

    def shorten(self, seconds: float) -> None:
        """End reads ``seconds`` from now if the deadline is later."""
        self._deadline = min(self._deadline, time.monotonic() + seconds)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the read deadline passed")
        view = memoryview(buffer).cast("B")
        if self._left is not None:
            if self._left <= 0:
                raise ReadLimitExceeded("more bytes than allowed")
            view = view[: self._left]
        self._sock.settimeout(left)
        count = self._sock.recv_into(view)
        if self._left is not None:
            self._left -= count
        return count


class ConnectionSlots:
    """The connections served at once, up to ``limit``, and which of them are idle (waiting
    for their next request). When every slot is taken, the connection idle longest is closed
    to make room; connections in their TLS handshake or in the middle of a request keep their
    slot until their deadline."""

    def __init__(self, limit: int) -> None:
        self._free = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        #: Idle connections, the one idle longest first.
        self._idle: dict[socket.socket, None] = {}
        #: Connections closed to make room whose slot has not been given back yet.
        self._evicted: set[socket.socket] = set()

    def take(self, timeout: float) -> bool:
        """A slot for a new connection, waiting up to ``timeout`` seconds; False when there
        is none (the connection idle longest is then closed, unless one closed that way has
        not given its slot back yet, so that a slot frees soon)."""
        if self._free.acquire(timeout=timeout):
            return True
        with self._lock:
            if self._evicted or not self._idle:
                return False
            sock = next(iter(self._idle))
            del self._idle[sock]
            self._evicted.add(sock)
        # The socket's own shutdown, not SSLSocket's, which would drop its TLS state under
        # the thread reading it: that read now ends at once, as if the peer had closed. An
        # OSError: the connection closed meanwhile.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return False

    def give_back(self, sock: socket.socket | None) -> None:
        """The slot of a connection that has closed (``None``: one never handed out)."""
        if sock is not None:
            with self._lock:
                self._idle.pop(sock, None)
                self._evicted.discard(sock)
        self._free.release()

    def idle(self, sock: socket.socket) -> None:
        """The connection waits for its next request: it may be closed to make room."""
        with self._lock:
            if sock not in self._evicted:
                self._idle[sock] = None

    def busy(self, sock: socket.socket) -> bool:
        """The connection's next request has begun: it keeps its slot until it is answered.
        False when it was closed to make room meanwhile."""
        with self._lock:
            self._idle.pop(sock, None)
            return sock not in self._evicted
