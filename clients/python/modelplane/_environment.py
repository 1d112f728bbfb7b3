"""The client-side facts recorded as a version's environment lineage."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from modelplane.v1 import registry_pb2


def capture_environment() -> registry_pb2.Environment:
    """Python version, platform and every installed distribution (as ``pip freeze`` lists them)."""
    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(name, dist.version)
    return registry_pb2.Environment(
        python_version=".".join(str(p) for p in sys.version_info[:3]),
        platform=platform.platform(),
        packages=[
            registry_pb2.Package(name=n, version=v)
            for n, v in sorted(packages.items(), key=lambda kv: kv[0].lower())
        ],
    )
