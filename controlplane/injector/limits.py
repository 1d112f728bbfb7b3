"""What keeps the webhook's memory and threads bounded whatever clients send: a byte budget
shared by the requests holding bodies, and socket reads that end by one deadline (and after
a number of bytes) however slowly the bytes trickle in."""

from __future__ import annotations

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
