"""The cores a server may use: CPU affinity and cgroup CPU quotas (v1 and v2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane.server.cpus import CpuBudget, cgroup_quota, cpu_budget
from modelplane.testing import launch
from modelplane.testing.cgroups import CgroupUnavailable, cpu_quota_group

PROBE = (
    "import json; from modelplane.server.cpus import cpu_budget, available_cores; "
    "b = cpu_budget(); print(json.dumps([b.affinity, b.quota, b.cores, available_cores()]))"
)


def _probe(prefix: list[str] | None = None) -> list[object]:
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _mountinfo(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _v2_tree(tmp_path: Path, limits: dict[str, str]) -> Path:
    root = tmp_path / "unified"
    for directory, cpu_max in limits.items():
        d = root / directory.strip("/") if directory != "/" else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(cpu_max + "\n")
    return root


def test_budget_takes_the_smaller_of_affinity_and_quota() -> None:
    assert CpuBudget(16).cores == 16
    assert CpuBudget(16, 1.0).cores == 1
    assert CpuBudget(16, 1.5).cores == 2  # a fractional core still runs a thread
    assert CpuBudget(16, 0.25).cores == 1  # never below one
    assert CpuBudget(2, 8.0).cores == 2  # the affinity mask binds first
    assert CpuBudget(4, 0.5).describe() == {
        "cores": 1,
        "affinity_cpus": 4,
        "cgroup_cpu_quota": 0.5,
    }


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path: Path) -> None:
    root = _v2_tree(
        tmp_path,
        {"/": "max 100000", "/kubepods": "400000 100000", "/kubepods/pod1/c1": "150000 100000"},
    )
    mountinfo = _mountinfo(f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw")
    assert cgroup_quota(mountinfo, "0::/kubepods/pod1/c1\n") == 1.5
    # The parent's limit binds when it is the smaller one.
    (root / "kubepods" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(mountinfo, "0::/kubepods/pod1/c1\n") == 0.5
    # "max" everywhere: no quota.
    for f in root.rglob("cpu.max"):
        f.write_text("max 100000\n")
    assert cgroup_quota(mountinfo, "0::/kubepods/pod1/c1\n") is None


def test_cgroup_v2_inside_a_container_namespace(tmp_path: Path) -> None:
    # With a cgroup namespace the container's own cgroup is "/" and sits at the mount point.
    root = _v2_tree(tmp_path, {"/": "200000 100000"})
    mountinfo = _mountinfo(f"30 23 0:26 / {root} ro - cgroup2 cgroup2 rw")
    assert cgroup_quota(mountinfo, "0::/\n") == 2.0
    # Without one, /proc/self/cgroup names the host's path, which the mount does not show:
    # the mount point's own limit is what applies.
    assert cgroup_quota(mountinfo, "0::/kubepods/burstable/pod9/abc\n") == 2.0


def test_cgroup_v2_bind_mounted_subtree(tmp_path: Path) -> None:
    # The mount shows /kubepods/pod1 at its mount point (mountinfo's root field).
    root = _v2_tree(tmp_path, {"/": "300000 100000", "/c1": "100000 100000"})
    mountinfo = _mountinfo(f"30 23 0:26 /kubepods/pod1 {root} rw - cgroup2 cgroup2 rw")
    assert cgroup_quota(mountinfo, "0::/kubepods/pod1/c1\n") == 1.0


def test_cgroup_v1_cpu_controller(tmp_path: Path) -> None:
    mount = tmp_path / "cpu,cpuacct"
    leaf = mount / "docker" / "abc"
    leaf.mkdir(parents=True)
    for d, quota in ((mount, "-1"), (mount / "docker", "-1"), (leaf, "250000")):
        (d / "cpu.cfs_quota_us").write_text(quota + "\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo = _mountinfo(
        f"40 31 0:35 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
        f"41 31 0:36 / {mount} rw - cgroup cgroup rw,cpu,cpuacct",
    )
    cgroup = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_quota(mountinfo, cgroup) == 2.5
    (leaf / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(mountinfo, cgroup) is None


def test_unreadable_or_odd_files_mean_no_limit(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path, {"/": "not a quota", "/a": "0 100000", "/a/b": "100000 0"})
    mountinfo = _mountinfo(
        "garbage line",
        f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw",
        f"31 23 0:27 / {tmp_path / 'missing'} rw - cgroup cgroup rw,cpu",
    )
    assert cgroup_quota(mountinfo, "1:cpu:/x\n0::/a/b\n") is None
    assert cgroup_quota("", "") is None
    # No /proc at all (another OS): the affinity alone.
    assert cpu_budget(tmp_path / "no-proc") == CpuBudget(len(os.sched_getaffinity(0)))


def test_this_process_reads_its_real_budget() -> None:
    affinity, quota, cores, available = _probe()
    assert affinity == len(os.sched_getaffinity(0))
    # The child runs in this process's cgroup, so it reads the same quota.
    proc = Path("/proc/self")
    assert quota == cgroup_quota((proc / "mountinfo").read_text(), (proc / "cgroup").read_text())
    assert cores == available
    assert 1 <= cores <= affinity


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed")
def test_affinity_mask_limits_the_cores() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU only: there is no smaller affinity mask to set")
    cpu = min(os.sched_getaffinity(0))
    affinity, _, cores, _ = _probe(["taskset", "-c", str(cpu)])
    assert (affinity, cores) == (1, 1)


def test_a_real_cgroup_quota_limits_the_cores() -> None:
    """Runs where the test may create a cgroup (root on a cgroup v1 or delegated v2 tree)."""
    try:
        with cpu_quota_group(50_000) as procs:
            affinity, quota, cores, available = _probe(launch.prefix(cgroup_procs=procs))
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    assert quota == 0.5
    assert cores == available == 1
    assert affinity == len(os.sched_getaffinity(0))
