"""The regression tolerance sidecars compare shadow answers with: 0 on the wire means unset
(a control plane older than the field), so the control plane refuses a setting of 0 rather
than have every sidecar silently compare with the default 0.1 instead."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from control_plane_double import state
from pydantic import ValidationError

from controlplane.settings import ControlPlaneSettings
from sidecar.managed.versions import DEFAULT_TOLERANCE, build_table

NAME = "fraud"


@pytest.mark.parametrize("tolerance", ["0", "-0.1"])
def test_the_control_plane_refuses_a_tolerance_that_is_not_above_zero(
    tolerance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_REGRESSION_TOLERANCE", tolerance)
    with pytest.raises(ValidationError, match="regression_tolerance"):
        ControlPlaneSettings()


def test_sidecars_compare_with_the_tolerance_the_control_plane_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPLANE_REGRESSION_TOLERANCE", "0.001")
    sent = ControlPlaneSettings().regression_tolerance
    champion: Any = SimpleNamespace(number=1, label="1")
    versions = {1: ("a" * 64, 1, "")}
    assert build_table(state(NAME, 1, versions, 1, tolerance=sent), {1: champion}).tolerance == sent
    # Unset (0) by a control plane older than the field: the default.
    unset = build_table(state(NAME, 1, versions, 1), {1: champion})
    assert unset.tolerance == DEFAULT_TOLERANCE
