"""A retraining webhook URL that could never be delivered (a malformed IPv6 host, a port that
is not a number from 1 to 65535) is refused with INVALID_ARGUMENT (INVALID_WEBHOOK_URL) and the
field, through a real control plane (gRPC on loopback, SQLite), on create and on update alike;
one that urlparse cannot split is no internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from tests.controlplane.test_deployments_api import deployed, register_versions

pytestmark = pytest.mark.timeout(60)

UNDELIVERABLE = [
    "http://[::1/retrain",  # urlparse: "Invalid IPv6 URL"
    "http://[::1]x/retrain",
    "http://[hooks.example]/retrain",
    "http://a[::1]/retrain",
    "http://hooks.example:abc/retrain",
    "http://hooks.example:99999/retrain",
    "http://hooks.example:0/retrain",
    "http://hooks.example:80:81/retrain",
    "https://hooks.example:-443/retrain",
]

DELIVERABLE = [
    "http://[::1]:8080/retrain",
    "http://[::1]/retrain",
    "https://hooks.example:65535/retrain?job=fraud",
    "https://hooks.example:1/retrain",
    "http://hooks.example:/retrain",  # an empty port is the scheme's own
]


def test_an_undeliverable_webhook_url_is_refused(c: Client, tmp_path: Path) -> None:
    model, versions = register_versions(c, tmp_path)
    dep, _ = deployed(c, tmp_path)
    for i, url in enumerate(UNDELIVERABLE):
        with pytest.raises(InvalidArgument) as err:
            c.create_deployment(
                f"bad{i}", model=model, champion_version=versions[0], webhook_url=url
            )
        _check_refusal(err.value, url)
        with pytest.raises(InvalidArgument) as err:
            c.update_deployment(dep, webhook_url=url)
        _check_refusal(err.value, url)
    assert not c.get_deployment(dep).retraining_hook.webhook_url


def test_a_deliverable_webhook_url_with_a_port_or_an_ipv6_host_is_kept(
    c: Client, tmp_path: Path
) -> None:
    dep, _ = deployed(c, tmp_path)
    for url in DELIVERABLE:
        assert c.update_deployment(dep, webhook_url=url).retraining_hook.webhook_url == url


def _check_refusal(err: InvalidArgument, url: str) -> None:
    assert err.reason == "INVALID_WEBHOOK_URL", (url, err)
    assert err.metadata["field"] == "retraining_hook.webhook_url"
    assert url in err.message
