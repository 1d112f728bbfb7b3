"""The SDK's errors as users meet them: every error class importable from ``modelplane``, and
a bad rollout strategy refused before anything is sent."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import modelplane
from modelplane import Client, InvalidArgument, errors
from tests.controlplane.test_deployments_api import deployed


def test_every_error_class_is_importable_from_the_package() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.ModelplaneError)
    }
    assert {"DeadlineExceeded", "Internal", "Cancelled", "Unimplemented"} <= classes
    for name in classes:
        assert name in modelplane.__all__
        assert getattr(modelplane, name) is getattr(errors, name)
    for name in ("ServerUnreachable", "CallDeadlineExceeded"):
        assert name in modelplane.__all__
        assert issubclass(getattr(modelplane, name), errors.ModelplaneError)


def test_an_unknown_rollout_strategy_is_refused_naming_it(client: Client, tmp_path: Path) -> None:
    dep, versions = deployed(client, tmp_path)
    with pytest.raises(InvalidArgument) as refused:
        client.start_rollout(dep, versions[1], strategy="blue-green")
    assert refused.value.reason == "INVALID_STRATEGY"
    assert "'blue-green'" in refused.value.message
    for valid in ("shadow", "canary", "ab", "blue_green"):
        assert valid in refused.value.message
    assert not client.get_deployment(dep).HasField("rollout")
    started = client.start_rollout(dep, versions[1], strategy="blue_green")
    assert started.rollout.candidate_version == versions[1]
