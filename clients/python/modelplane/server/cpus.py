"""How many cores a server process may really use: its CPU affinity and its cgroup's CPU quota.

``os.cpu_count()`` counts the machine's cores. In a Kubernetes pod with ``limits.cpu: 1`` on a
32-core node it still says 32, while the kernel lets the container run one core's worth of
time per period and throttles it for the rest. Sizing thread pools, worker processes or ONNX
Runtime's intra-op pool from the machine's count then runs dozens of threads on one core's
budget. :func:`cpu_budget` reads what the process may use:

- the CPUs in its affinity mask (``taskset``, a cpuset, Kubernetes' static CPU manager);
- the CPU quota of its cgroup and of every cgroup above it, the smallest of them (cgroup v2
  ``cpu.max``, cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), found through
  ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` as the kernel documents them.

A quota of 1.5 cores gives 2: a fractional core still runs a thread part of the time. Files
that are missing or unreadable count as no limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class CpuBudget:
    """What the process may use: ``affinity`` CPUs, and ``quota`` cores of CPU time per
    period (None: no quota)."""

    affinity: int
    quota: float | None = None

    @property
    def cores(self) -> int:
        """Whole cores to size pools by (at least 1)."""
        limit = self.affinity if self.quota is None else min(self.affinity, math.ceil(self.quota))
        return max(1, limit)

    def describe(self) -> dict[str, object]:
        """Fields for a log line."""
        return {
            "cores": self.cores,
            "affinity_cpus": self.affinity,
            "cgroup_cpu_quota": None if self.quota is None else round(self.quota, 3),
        }


@dataclass(frozen=True)
class CgroupMount:
    """A cgroup hierarchy that holds CPU limits: cgroup2, or cgroup v1's ``cpu`` controller."""

    version: int
    #: The cgroup directory the mount shows at its mount point (``/`` unless bind-mounted).
    root: str
    point: Path


def cpu_cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup2 mounts and the cgroup v1 mounts of the ``cpu`` controller in the text of
    ``/proc/self/mountinfo``."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.append(CgroupMount(2, root, point))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            found.append(CgroupMount(1, root, point))
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _paths(cgroup: str) -> dict[int | str, str]:
    """The process's cgroup per hierarchy: ``2`` for the unified one, ``"cpu"`` for v1's."""
    out: dict[int | str, str] = {}
    for line in cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            out[2] = path
        elif "cpu" in controllers.split(","):
            out["cpu"] = path
    return out


def _directories(mount: CgroupMount, path: str) -> list[Path]:
    """The process's cgroup directory under ``mount`` and every one above it, innermost first.

    Inside a container the mount often shows the container's own cgroup at the mount point
    while ``/proc/self/cgroup`` names the host's path: then only the mount point is known."""
    relative = PurePosixPath(path)
    root = PurePosixPath(mount.root)
    if root != PurePosixPath("/"):
        if relative != root and root not in relative.parents:
            return [mount.point]
        relative = relative.relative_to(root)
    else:
        relative = relative.relative_to("/") if relative.is_absolute() else relative
    innermost = mount.point / relative
    if not innermost.is_dir():
        return [mount.point]
    return [innermost, *[p for p in innermost.parents if mount.point in (p, *p.parents)]]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    try:
        value, per = float(quota), float(period or 100000)
    except ValueError:  # "max": no limit
        return None
    return value / per if value > 0 and per > 0 else None


def _quota_v1(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        value, per = float(quota or "-1"), float(period or "0")
    except ValueError:
        return None
    return value / per if value > 0 and per > 0 else None


def cgroup_quota(mountinfo: str, cgroup: str) -> float | None:
    """The smallest CPU quota (in cores) on the process's cgroup path, from the text of
    ``/proc/self/mountinfo`` and ``/proc/self/cgroup``; None when nothing limits it."""
    paths = _paths(cgroup)
    quotas = []
    for mount in cpu_cgroup_mounts(mountinfo):
        path = paths.get(2 if mount.version == 2 else "cpu")
        if path is None:
            continue
        read = _quota_v2 if mount.version == 2 else _quota_v1
        for directory in _directories(mount, path):
            quota = read(directory)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_budget(proc: Path = Path("/proc/self")) -> CpuBudget:
    """What this process may use now (``proc``: where to read ``mountinfo`` and ``cgroup``)."""
    mountinfo, cgroup = _read(proc / "mountinfo"), _read(proc / "cgroup")
    quota = cgroup_quota(mountinfo, cgroup) if mountinfo and cgroup else None
    return CpuBudget(_affinity(), quota)


@cache
def process_budget() -> CpuBudget:
    """:func:`cpu_budget` of this process, read once."""
    return cpu_budget()


def available_cores() -> int:
    """:attr:`CpuBudget.cores` of this process, read once."""
    return process_budget().cores
