"""Which feature columns a model's inputs provide: the one rule the registry (when it checks a
baseline against the model) and the sidecar (when it feeds drift from requests) both apply."""

from __future__ import annotations

from collections.abc import Sequence


def input_columns(
    inputs: Sequence[tuple[str, Sequence[int]]], feature_names: Sequence[str] | None
) -> dict[str, tuple[str, int | None]]:
    """Every feature column the inputs (``(name, shape)`` pairs, ``-1`` where a dim varies)
    provide: name -> (input, column index, or None for a whole input).

    A ``[-1]`` input is one column named after the input; a ``[-1, F]`` input is ``F``
    columns, named by ``feature_names`` when it is the only such input and they are ``F``,
    else ``x_0..x_{F-1}`` (``<input>_0..`` when the model has several). When there are several,
    a ``[-1, 1]`` input's one column also goes by the input's own name, as evaluation binds it
    (skl2onnx gives each column of a pipeline such an input): a dataset whose columns are the
    inputs' names profiles the model's features. Other inputs give none.
    """
    tabular = [name for name, shape in inputs if len(shape) == 2 and shape[1] >= 0]
    columns: dict[str, tuple[str, int | None]] = {}
    for name, shape in inputs:
        if len(shape) == 1:
            columns[name] = (name, None)
        elif name in tabular:
            width = shape[1]
            if feature_names is not None and len(tabular) == 1 and len(feature_names) == width:
                names = list(feature_names)
            else:
                prefix = f"{name}_" if len(tabular) > 1 else "x_"
                names = [f"{prefix}{j}" for j in range(width)]
            if width == 1 and len(tabular) > 1:
                columns[name] = (name, 0)
            for j, column in enumerate(names):
                columns[column] = (name, j)
    return columns
