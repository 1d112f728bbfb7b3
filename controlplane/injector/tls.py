"""The webhook's TLS context, rebuilt when the certificate files change on disk (cert-manager
and Secret volume updates rotate them in place)."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path


class ReloadingContext:
    """Hands out an :class:`ssl.SSLContext` for ``cert``/``key``, reloaded after rotation."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert = cert
        self._key = key
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] | None = None
        self._context: ssl.SSLContext | None = None

    def _stamp_now(self) -> tuple[float, float]:
        return (os.stat(self._cert).st_mtime, os.stat(self._key).st_mtime)

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        return context

    def current(self) -> ssl.SSLContext:
        """The context for the files as they are now; raises ``OSError``/``ssl.SSLError`` on
        the first call when they cannot be loaded, and keeps the last good context after."""
        with self._lock:
            try:
                stamp = self._stamp_now()
                if stamp != self._stamp or self._context is None:
                    self._context = self._build()
                    self._stamp = stamp
            except (OSError, ssl.SSLError):
                if self._context is None:
                    raise
            return self._context
