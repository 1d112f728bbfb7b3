"""Alias etags: every move gives a new one, and SetAlias / DeleteAlias with an etag apply only
while the alias is still as read, so two people who both read `production -> 1` cannot both
move it without one of them hearing about the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.cli import main
from modelplane.errors import Aborted
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def _model_with_versions(c: Client, tmp: Path, count: int) -> str:
    model_id = unique()
    c.create_model(model_id)
    path = onnx_models.save(onnx_models.mlp(4), tmp / "m.onnx")
    for _ in range(count):
        c.register_version(model_id, path, capture_env=False)
    return model_id


def test_a_second_move_from_the_same_read_is_aborted(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = _model_with_versions(c, tmp_path, 3)
        # An alias no policy governs (tests on one database share their policies' targets).
        alias = unique("a")
        first = c.set_alias(model_id, alias, 1)
        assert first.etag and c.get_alias(model_id, alias).etag == first.etag
        assert c.list_aliases(model_id)[0].etag == first.etag
        # Alice and Bob both read production -> 1; Alice moves it first.
        moved = c.set_alias(model_id, alias, 2, etag=first.etag)
        assert moved.etag != first.etag
        with pytest.raises(Aborted) as err:
            c.set_alias(model_id, alias, 3, etag=first.etag)
        assert err.value.reason == "ETAG_MISMATCH" and alias in err.value.message
        assert c.get_alias(model_id, alias).version.endswith("/versions/2")
        # Set again to the same version, it is still a move: the old etag is stale.
        again = c.set_alias(model_id, alias, 2)
        assert again.etag != moved.etag
        with pytest.raises(Aborted):
            c.delete_alias(model_id, alias, etag=moved.etag)
        events = list(c.alias_history(model_id, alias))
        assert len(events) == 3  # the refused calls left no event
        c.delete_alias(model_id, alias, etag=again.etag)
        # An etag of an alias deleted since is stale too.
        with pytest.raises(Aborted):
            c.set_alias(model_id, alias, 1, etag=again.etag)
        assert c.list_aliases(model_id) == []
        # The etag of a past position, read with as_of, is the etag it had then.
        assert c.get_alias(model_id, alias, as_of=moved.update_time.ToDatetime()).etag == (
            moved.etag
        )
        # Without an etag, a move applies whatever the alias is.
        assert c.set_alias(model_id, alias, 1).version.endswith("/versions/1")


def test_a_replayed_set_answers_the_etag_it_set(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id = _model_with_versions(c, tmp_path, 2)
        first = c.set_alias(model_id, "prod", 1, request_id=f"set-{model_id}")
        c.set_alias(model_id, "prod", 2)
        replayed = c.set_alias(model_id, "prod", 1, request_id=f"set-{model_id}")
        assert replayed.etag == first.etag and replayed.version == first.version


def test_the_cli_takes_the_etag(
    controlplane: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with controlplane.client() as c:
        model_id = _model_with_versions(c, tmp_path, 2)
        etag = c.set_alias(model_id, "prod", 1).etag

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--server", controlplane.address, "--output", "json", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("alias", "set", model_id, "prod", "2", "--etag", etag)
    assert code == 0, err
    moved = json.loads(out)
    assert moved["etag"] and moved["etag"] != etag
    code, out, err = run("alias", "delete", model_id, "prod", "--etag", etag)
    assert code == 3 and out == "" and "ABORTED (ETAG_MISMATCH)" in err
    assert run("alias", "delete", model_id, "prod", "--etag", moved["etag"])[0] == 0
