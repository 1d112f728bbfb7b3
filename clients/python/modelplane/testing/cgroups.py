"""A real cgroup with a CPU quota, for tests that check what a process makes of its limits.

Creating one needs write access to a cgroup tree (root on a cgroup v1 ``cpu`` hierarchy, or a
delegated cgroup v2 tree with the ``cpu`` controller on); :func:`cpu_quota_group` raises
:class:`CgroupUnavailable` with the reason where that is not so, for the caller to skip.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelplane.server.cpus import cpu_cgroup_mounts


class CgroupUnavailable(RuntimeError):
    """No cgroup with a CPU quota can be made here."""


@contextlib.contextmanager
def cpu_quota_group(quota_us: int, period_us: int = 100_000) -> Iterator[Path]:
    """A new cgroup allowing ``quota_us`` of CPU time per ``period_us``; yields its
    ``cgroup.procs`` file (write a process id there to move that process in). The group is
    removed afterwards, once its processes have ended."""
    mounts = cpu_cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    v1 = [m.point for m in mounts if m.version == 1]
    if v1:
        mount = v1[0]
        files = {"cpu.cfs_period_us": str(period_us), "cpu.cfs_quota_us": str(quota_us)}
    else:
        mount = Path("/sys/fs/cgroup")
        files = {"cpu.max": f"{quota_us} {period_us}"}
    group = mount / f"modelplane-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create a cgroup under {mount}: {exc}") from None
    try:
        try:
            for name, value in files.items():
                (group / name).write_text(value)
        except OSError as exc:
            raise CgroupUnavailable(f"cannot set a CPU quota in {group}: {exc}") from None
        yield group / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()
