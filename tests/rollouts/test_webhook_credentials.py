"""A retraining webhook URL with credentials (``https://user:token@host/...``) is refused,
through a real control plane (gRPC on loopback, SQLite), with a message that does not repeat
them: urllib never sends them, so the webhook would never be called; one stored before the
check is not called, and its URL is not logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from controlplane.rollouts.hooks import HookRunner
from modelplane import Client
from modelplane.errors import InvalidArgument
from tests.controlplane.test_deployments_api import deployed, register_versions

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-token"


@pytest.mark.parametrize(
    "url",
    [
        f"http://ci-bot:{SECRET}@127.0.0.1:9/job/retrain",
        f"https://{SECRET}@ci.example.org/hooks/retrain",
    ],
)
def test_a_webhook_url_with_credentials_is_refused(c: Client, tmp_path: Path, url: str) -> None:
    model, versions = register_versions(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        c.create_deployment(
            "with-creds", model=model, champion_version=versions[0], webhook_url=url
        )
    _check_refusal(err.value)
    dep, _ = deployed(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        c.update_deployment(dep, webhook_url=url)
    _check_refusal(err.value)
    assert not c.get_deployment(dep).retraining_hook.webhook_url
    fine = "https://ci.example.org/hooks/retrain?job=fraud"
    assert c.update_deployment(dep, webhook_url=fine).retraining_hook.webhook_url == fine


def _check_refusal(err: InvalidArgument) -> None:
    assert err.reason == "INVALID_WEBHOOK_URL"
    assert err.metadata["field"] == "retraining_hook.webhook_url"
    assert "credentials" in err.message and "hooks file" in err.message
    assert SECRET not in err.message


def test_a_stored_webhook_url_with_credentials_is_not_called_nor_logged() -> None:
    url = f"http://ci-bot:{SECRET}@127.0.0.1:9/job/retrain"
    with structlog.testing.capture_logs() as logs:
        HookRunner({}, 3.0)._post("fraud", url, b"{}")
    assert [e["event"] for e in logs] == [
        "retraining webhook not called: its URL carries credentials; set one without"
    ]
    assert SECRET not in repr(logs)
