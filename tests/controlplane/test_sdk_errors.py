"""The SDK's errors as users meet them: every error class importable from ``modelplane``."""

from __future__ import annotations

import inspect

import modelplane
from modelplane import errors


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
