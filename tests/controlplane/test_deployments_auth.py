"""Who may do what to deployments on a server with access control: only admins set a
retraining webhook, developers run rollouts, a sidecar token only follows and reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.errors import NotFound, PermissionDenied
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server

PEOPLE = {
    "ada": (["admin"], []),
    "dana": (["developer"], []),
    "sid": (["sidecar"], []),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    s = start_token_server(tmp_path_factory.mktemp("deploy-auth"), PEOPLE)
    yield s
    s.cp.handle.stop(0)


def _model(server: TokenServer, tmp: Path) -> str:
    name = unique()
    with server.client("dana") as dana:
        dana.create_model(name)
        for seed in (0, 1):
            path = save(mlp(8, (16,), 2, seed=seed), tmp / f"{name}-{seed}.onnx")
            dana.register_version(name, path, capture_env=False)
    return name


def _refused(call: object, reason: str) -> PermissionDenied:
    assert callable(call)
    with pytest.raises(PermissionDenied) as denied:
        call()
    assert denied.value.reason == reason, denied.value
    return denied.value


def test_only_admins_set_the_retraining_webhook(server: TokenServer, tmp_path: Path) -> None:
    model = _model(server, tmp_path)
    hook = "https://ci.example.org/hooks/retrain"
    with server.client("dana") as dana, server.client("ada") as ada:
        err = _refused(
            lambda: dana.create_deployment(
                model, model=model, champion_version=1, webhook_url=hook
            ),
            "ROLE_REQUIRED",
        )
        assert "webhook" in err.message
        with pytest.raises(NotFound):  # nothing was created by the refused call
            dana.get_deployment(model)
        created = dana.create_deployment(model, model=model, champion_version=1)
        assert created.retraining_hook.webhook_url == ""
        _refused(lambda: dana.update_deployment(model, webhook_url=hook), "ROLE_REQUIRED")
        updated = ada.update_deployment(model, webhook_url=hook)
        assert updated.retraining_hook.webhook_url == hook
        # Developers still change everything else.
        assert dana.update_deployment(model, description="fraud scores").description


def test_the_webhook_url_is_shown_in_full_only_to_admins(
    server: TokenServer, tmp_path: Path
) -> None:
    """Hook URLs carry their tokens in the path or query: a developer or a sidecar sees the
    scheme and host only, in every answer that holds the deployment."""
    model = _model(server, tmp_path)
    hook = "https://hooks.example.org:8443/services/T0/B0/SECRET-TOKEN?key=abc"
    shown = "https://hooks.example.org:8443/…"
    with server.client("ada") as ada, server.client("dana") as dana:
        made = ada.create_deployment(model, model=model, champion_version=1, webhook_url=hook)
        assert made.retraining_hook.webhook_url == hook
        assert ada.get_deployment(model).retraining_hook.webhook_url == hook
        assert dana.get_deployment(model).retraining_hook.webhook_url == shown
        listed = [d for d in dana.list_deployments() if d.name == made.name]
        assert [d.retraining_hook.webhook_url for d in listed] == [shown]
        described = dana.update_deployment(model, description="scores")
        assert described.retraining_hook.webhook_url == shown
        started = dana.start_rollout(model, 2, strategy="shadow")
        assert started.retraining_hook.webhook_url == shown
        # The stored URL is unchanged by what developers were shown.
        assert ada.get_deployment(model).retraining_hook.webhook_url == hook
    with server.client("sid") as sid:
        assert "SECRET" not in str(sid.get_deployment(model))


def test_developers_roll_out_and_sidecars_only_follow(server: TokenServer, tmp_path: Path) -> None:
    model = _model(server, tmp_path)
    with server.client("dana") as dana, server.client("sid") as sid:
        dana.create_deployment(model, model=model, champion_version=1)
        _refused(lambda: sid.start_rollout(model, 2, strategy="canary"), "ROLE_REQUIRED")
        started = dana.start_rollout(model, 2, strategy="canary")
        assert started.rollout.candidate_version == 2
        state = next(iter(sid.watch_deployment(model, replica="r1", timeout=10)))
        assert state.candidate_version == 2
        _refused(lambda: sid.promote_rollout(model), "ROLE_REQUIRED")
        _refused(lambda: sid.delete_deployment(model), "ROLE_REQUIRED")
        assert dana.abort_rollout(model, reason="done").champion_version == 1
