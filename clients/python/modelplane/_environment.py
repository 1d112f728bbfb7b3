"""The client-side facts recorded as a version's environment lineage."""

from __future__ import annotations

import platform
import sys
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

from modelplane.v1 import registry_pb2


def capture_environment() -> registry_pb2.Environment:
    """Python version, platform and every installed distribution (as ``pip freeze`` lists them).

    A distribution whose metadata cannot be read as UTF-8 is recorded by the name and version
    its headers give when those are readable, and left out otherwise: one badly packaged
    package does not stop a registration."""
    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except (UnicodeDecodeError, OSError):
            name, version = _raw_name_version(dist)
        if name:
            packages.setdefault(name, version or "")
    return registry_pb2.Environment(
        python_version=".".join(str(p) for p in sys.version_info[:3]),
        platform=platform.platform(),
        packages=[
            registry_pb2.Package(name=n, version=v)
            for n, v in sorted(packages.items(), key=lambda kv: kv[0].lower())
        ],
    )


def _raw_name_version(dist: metadata.Distribution) -> tuple[str, str]:
    """Name and version from metadata that is not UTF-8 (a Latin-1 summary, say), when the
    two are themselves readable; ``("", "")`` otherwise."""
    folder = getattr(dist, "_path", None)  # PathDistribution's; other kinds are left out
    if not isinstance(folder, Path):
        return "", ""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            raw = (folder / filename).read_bytes()
        except OSError:
            continue
        headers = HeaderParser().parsestr(raw.decode("utf-8", "replace"), headersonly=True)
        name, version = str(headers.get("Name") or ""), str(headers.get("Version") or "")
        if "\ufffd" in name + version:
            return "", ""
        return name.strip(), version.strip()
    return "", ""
