"""Inputs the CLI and SDK refuse or clean before sending, against a real server: credentials in a
git remote, durations no Duration holds, repeated KEY=VALUE keys, metadata and arguments that
are not UTF-8, digits int() refuses, unbounded intervals, times and timeouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.cli._checks import message_dict, without_credentials
from modelplane.errors import InvalidArgument, NotFound
from modelplane.testing.onnx_models import mlp, save
from modelplane.v1 import deployments_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _git_repo(folder: Path, remote: str | bytes) -> Path:
    folder.mkdir()
    for argv in (
        [b"init", b"-q"],
        [b"remote", b"add", b"origin", os.fsencode(remote)],
        [
            b"-c",
            b"user.name=t",
            b"-c",
            b"user.email=t@e",
            b"commit",
            b"-qm",
            b"x",
            b"--allow-empty",
        ],
    ):
        subprocess.run([b"git", *argv], cwd=folder, check=True, capture_output=True)
    return folder


def _register_here(cli: Cli, onnx: Path) -> dict:  # type: ignore[type-arg]
    name = unique()
    cli.json("models", "create", name)
    return cli.json("versions", "register", name, "--onnx", str(onnx), "--no-environment")


# Credentials in the code repository URL ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("https://alice:ghp_TOKEN@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_TOKEN@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://a:p@ss@host/x?y=1", "https://host/x"),
        ("ssh://git:pw@host/org/repo", "ssh://git@host/org/repo"),
        ("ssh://git@host/org/repo", "ssh://git@host/org/repo"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("/srv/git/repo", "/srv/git/repo"),
        ("", ""),
    ],
)
def test_credentials_are_taken_out_of_a_remote_url(url: str, recorded: str) -> None:
    assert without_credentials(url) == recorded


def test_register_records_the_git_remote_without_its_credentials(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _git_repo(tmp_path / "repo", "https://alice:ghp_SECRET@github.com/org/repo.git")
    monkeypatch.chdir(repo)
    v = _register_here(cli, trained_model.onnx)
    assert v["lineage"]["code"]["repository"] == "https://github.com/org/repo.git"
    assert len(v["lineage"]["code"]["commit"]) == 40
    assert "SECRET" not in json.dumps(v)


def test_register_reads_a_remote_that_is_not_utf8(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _git_repo(tmp_path / "repo", b"https://host/caf\xe9.git")
    monkeypatch.chdir(repo)
    v = _register_here(cli, trained_model.onnx)
    assert v["lineage"]["code"]["repository"] == "https://host/caf\\xe9.git"


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:ghp_SECRET@github.com/org/repo.git",
        "https://ghp_SECRET@github.com/org/repo.git",
        "ssh://git:SECRET@host/org/repo",
        "git+https://SECRET@host/org/repo",
        "https://host/org/repo.git?access_token=SECRET",
    ],
)
def test_the_server_refuses_credentials_in_the_code_repository(
    client: Client, trained_model: TrainedModel, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a client that sends the URL as given (other languages, SDKs older than the check).
    monkeypatch.setattr("modelplane._client.without_credentials", lambda given: given)
    name = unique()
    client.create_model(name)
    with pytest.raises(InvalidArgument) as err:
        client.register_version(name, trained_model.onnx, code_repo=url, capture_env=False)
    assert err.value.reason == "CREDENTIALS_IN_URL"
    assert "SECRET" not in err.value.message


def test_the_sdk_records_a_code_repository_without_its_credentials(
    client: Client, trained_model: TrainedModel
) -> None:
    name = unique()
    client.create_model(name)
    for given, recorded in (
        ("https://org@dev.azure.com/org/p/_git/r", "https://dev.azure.com/org/p/_git/r"),
        ("git+https://SECRET@host/org/repo", "git+https://host/org/repo"),
    ):
        v = client.register_version(name, trained_model.onnx, code_repo=given, capture_env=False)
        assert v.lineage.code.repository == recorded


def test_the_server_takes_an_ssh_login(client: Client, trained_model: TrainedModel) -> None:
    name = unique()
    client.create_model(name)
    for url in ("git@github.com:org/repo.git", "ssh://git@host/org/repo"):
        v = client.register_version(name, trained_model.onnx, code_repo=url, capture_env=False)
        assert v.lineage.code.repository == url


# Durations -----------------------------------------------------------------------------------


def _model(client: Client, tmp_path: Path) -> str:
    name = unique()
    client.create_model(name)
    for seed in (0, 1):
        path = save(mlp(8, (16,), 2, seed=seed), tmp_path / f"{name}-{seed}.onnx")
        client.register_version(name, path, capture_env=False)
    return name


@pytest.mark.parametrize("cooldown", ["400000000000s", "99999999999d", "367d"])
def test_a_drift_cooldown_past_366_days_is_a_usage_error(
    cli: Cli, client: Client, tmp_path: Path, cooldown: str
) -> None:
    model = _model(client, tmp_path)
    argv = ["deployments", "create", model, "--model", model, "--champion", "1"]
    code, out, err = cli.run(*argv, "--drift-cooldown", cooldown)
    assert (code, out) == (2, "") and "--drift-cooldown" in err and "Traceback" not in err
    with pytest.raises(NotFound):
        client.get_deployment(model)  # nothing was sent
    assert cli.json(*argv, "--drift-cooldown", "366d")["drift_thresholds"]["cooldown"] == (
        "31622400s"
    )
    code, out, err = cli.run("deployments", "update", model, "--drift-cooldown", cooldown)
    assert (code, out) == (2, "") and "--drift-cooldown" in err


@pytest.mark.parametrize("seconds", [4e11, 1e20, -1.0, float("nan"), float("inf")])
def test_the_sdk_refuses_a_cooldown_out_of_range_before_sending(
    client: Client, seconds: float
) -> None:
    name = unique()
    with pytest.raises(InvalidArgument) as err:
        client.create_deployment(name, model=name, champion_version=1, drift_cooldown=seconds)
    assert err.value.reason == "INVALID_DRIFT_THRESHOLDS"
    with pytest.raises(InvalidArgument) as err:
        client.update_deployment(name, drift_thresholds={"cooldown": seconds})
    assert err.value.reason == "INVALID_DRIFT_THRESHOLDS"


@pytest.mark.parametrize("seconds", [7 * 86400 + 1, 4e11, 1e20, -5.0])
def test_the_sdk_refuses_a_step_duration_out_of_range_before_sending(
    client: Client, seconds: float
) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.start_rollout(unique(), 2, step_duration=seconds)
    assert err.value.reason == "INVALID_DURATION"


@pytest.mark.parametrize("step", ["8d", "99999999999d"])
def test_a_step_duration_past_7_days_is_a_usage_error(cli: Cli, step: str) -> None:
    code, out, err = cli.run(
        "rollout", "start", "d", "--candidate", "2", "--strategy", "canary", "--step-duration", step
    )
    assert (code, out) == (2, "") and "--step-duration" in err and "Traceback" not in err


def _bad_deployment() -> deployments_pb2.Deployment:
    d = deployments_pb2.Deployment(name="deployments/x", model="models/x", champion_version=1)
    d.drift_thresholds.cooldown.seconds = 400_000_000_000
    d.drift_thresholds.min_rows = 5
    d.create_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    return d


def test_an_out_of_range_duration_is_shown_as_seconds() -> None:
    doc = message_dict(_bad_deployment())
    assert doc["drift_thresholds"]["cooldown"] == 400_000_000_000
    assert doc["drift_thresholds"]["min_rows"] == "5"
    assert doc["create_time"] == "2026-01-01T00:00:00Z"
    good = deployments_pb2.Deployment(name="deployments/y")
    good.drift_thresholds.cooldown.seconds = 300
    assert message_dict(good)["drift_thresholds"]["cooldown"] == "300s"


@pytest.mark.parametrize("output", ["json", "table"])
def test_a_stored_out_of_range_cooldown_does_not_lock_readers_out(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    monkeypatch.setattr(Client, "get_deployment", lambda self, name: _bad_deployment())
    monkeypatch.setattr(Client, "list_deployments", lambda self: iter([_bad_deployment()]))
    code, out, err = cli.run("deployments", "get", "x", output=output)
    assert code == 0, err
    code, out, err = cli.run("deployments", "list", output=output)
    assert code == 0, err
    if output == "json":
        assert json.loads(out)["deployments"][0]["drift_thresholds"]["cooldown"] == 4e11


# Repeated keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--dataset", "train=A", "--dataset", "train=A"],
        ["--param", "C=1", "--param", "C=2"],
        ["--metric", "auc=0.9", "--metric", "auc=0.8"],
        ["--set-label", "stage=a", "--set-label", "stage=b"],
    ],
)
def test_register_refuses_a_key_given_twice(
    cli: Cli, trained_model: TrainedModel, extra: list[str]
) -> None:
    extra = [x.replace("A", str(trained_model.train)) for x in extra]
    name = unique()
    cli.json("models", "create", name)
    code, out, err = cli.run(
        "versions", "register", name, "--onnx", str(trained_model.onnx), "--label", "target", *extra
    )
    assert (code, out) == (2, "") and extra[0] in err and "more than once" in err
    assert cli.json("versions", "list", name)["versions"] == []


def test_update_refuses_a_label_given_twice(cli: Cli, trained_model: TrainedModel) -> None:
    name = unique()
    cli.json("models", "create", name)
    cli.json("versions", "register", name, "--onnx", str(trained_model.onnx), "--no-environment")
    code, out, err = cli.run(
        "versions", "update", name, "1", "--set-label", "a=1", "--set-label", "a=2"
    )
    assert (code, out) == (2, "") and "--set-label" in err


# Environment metadata that is not UTF-8 ------------------------------------------------------


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    for folder, text in (
        (
            "latin-1.0.dist-info",
            b"Metadata-Version: 2.1\nName: latin\nVersion: 1.0\nSummary: caf\xe9\n",
        ),
        ("badname-1.0.dist-info", b"Metadata-Version: 2.1\nName: caf\xe9\nVersion: 1.0\n"),
        ("nover-1.0.dist-info", b"Metadata-Version: 2.1\nName: nover\n"),
    ):
        (site / folder).mkdir(parents=True)
        (site / folder / "METADATA").write_bytes(text)
    return site


def test_environment_capture_survives_metadata_that_is_not_utf8(
    client: Client, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_site(tmp_path)))
    name = unique()
    client.create_model(name)
    v = client.register_version(name, trained_model.onnx)
    packages = {p.name: p.version for p in v.lineage.environment.packages}
    assert packages["latin"] == "1.0" and packages["nover"] == ""
    assert not any(n.startswith("caf") for n in packages)


def test_the_environment_is_captured_before_anything_is_uploaded(
    client: Client, trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelplane._client as sdk

    uploads: list[object] = []

    def broken() -> None:
        raise RuntimeError("cannot read the environment")

    monkeypatch.setattr(sdk, "capture_environment", broken)
    monkeypatch.setattr(Client, "upload_blob", lambda self, path: uploads.append(path))
    with pytest.raises(RuntimeError):
        client.register_version(unique(), trained_model.onnx)
    assert uploads == []


# Arguments and file names that are not UTF-8 ---------------------------------------------------


def test_an_argument_that_is_not_utf8_is_a_usage_error(cli: Cli) -> None:
    bad = os.fsdecode(b"caf\xe9")
    code, out, err = cli.run("models", "get", bad)
    assert (code, out) == (2, "")
    assert "caf\\xe9" in err and "UTF-8" in err and "internal error" not in err
    code, out, err = cli.run("models", "create", unique(), "--label", f"team={bad}")
    assert (code, out) == (2, "") and "team=caf\\xe9" in err


def test_a_dataset_file_name_that_is_not_utf8_is_recorded_with_escapes(
    client: Client, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weird = os.fsdecode(b"caf\xe9.parquet")
    shutil.copy(trained_model.train, tmp_path / weird)
    monkeypatch.chdir(tmp_path)
    name = unique()
    client.create_model(name)
    v = client.register_version(
        name, trained_model.onnx, datasets={"train": weird}, label="target", capture_env=False
    )
    assert v.lineage.datasets[0].source == "caf\\xe9.parquet"


# Digits, intervals, times and timeouts ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "²"],
        ["--workers", "٣"],
        ["--listen", "127.0.0.1:²"],
        ["--metrics-listen", "127.0.0.1:٣"],
    ],
)
def test_serve_takes_ascii_digits_only(cli: Cli, tmp_path: Path, argv: list[str]) -> None:
    code, out, err = cli.run(
        "controlplane", "serve", "--db", f"sqlite:///{tmp_path / 'cp.db'}", *argv
    )
    assert (code, out) == (2, "") and argv[0] in err and "internal error" not in err


@pytest.mark.parametrize("interval", ["inf", "1e400", "nan", "0", "-1", "3601"])
def test_the_watch_interval_is_finite_positive_and_bounded(cli: Cli, interval: str) -> None:
    code, out, err = cli.run("rollout", "status", "d", "--watch", "--interval", interval)
    assert (code, out) == (2, "") and "--interval" in err


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"])
def test_an_as_of_outside_the_years_1_to_9999_in_utc_is_a_usage_error(cli: Cli, as_of: str) -> None:
    code, out, err = cli.run("alias", "get", unique(), "champion", "--as-of", as_of)
    assert (code, out) == (2, "") and "--as-of" in err and "internal error" not in err


def test_the_sdk_refuses_an_as_of_outside_timestamps_range(client: Client) -> None:
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidArgument) as err:
        client.get_alias(unique(), "champion", as_of=early)
    assert err.value.reason == "INVALID_TIMESTAMP"


def test_a_timeout_past_the_longest_is_a_usage_error(cli: Cli) -> None:
    code, out, err = cli.run("--timeout", "1e10", "models", "list")
    assert (code, out) == (2, "") and "--timeout" in err
    code, out, err = cli.run("--timeout", "1e8", "models", "list")
    assert code == 0, err
