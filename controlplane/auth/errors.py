"""The error raised when access-control settings cannot be used."""

from __future__ import annotations


class AccessConfigError(ValueError):
    """Access-control or TLS settings are missing, inconsistent or unreadable; the message says
    which and what to change. The server refuses to start."""
