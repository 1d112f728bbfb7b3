"""How a model's one float output column is read: a class probability or a regression value.

The control plane's evaluation and the managed sidecar's comparisons read a float output of
shape ``[-1]`` / ``[-1, 1]`` by the same rule:

* it is the **probability** of the positive class when the node producing it is ``Sigmoid``
  or ``Softmax``, or its name contains ``prob`` (any letter case);
* it is also a classifier's score when the model has an integer, string or boolean column
  output **named as a label**: its name contains ``label`` (any letter case: ``label``,
  ``output_label``, ``predicted_label``);
* otherwise it is a **regression** value, whatever other outputs the model has (an integer
  ``count`` made by rounding the prediction does not make a classifier).

This module imports nothing heavy: the producers come from a graph the caller loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Ops whose output is a probability.
PROBABILITY_OPS = frozenset({"Sigmoid", "Softmax"})


def is_probability(name: str, producer_op: str) -> bool:
    """Whether a float output column is a probability: made by Sigmoid or Softmax, or named
    ``*prob*`` (any letter case)."""
    return producer_op in PROBABILITY_OPS or "prob" in name.lower()


def is_label_name(name: str) -> bool:
    """Whether an output's name marks it as a predicted label (contains ``label``, any case)."""
    return "label" in name.lower()


def column_is_classifier(name: str, producer_op: str, label_outputs: Iterable[str]) -> bool:
    """Whether the float output column ``name`` (made by ``producer_op``) is a binary
    classifier's score, given the names of the model's integer, string or boolean column
    outputs (see the module docstring); False means it is a regression value."""
    return is_probability(name, producer_op) or any(is_label_name(n) for n in label_outputs)


def output_producers(graph: Any) -> dict[str, str]:
    """Graph output name -> op type of the node producing it ("" for an output that is an
    input or an initializer), for an ONNX ``GraphProto``."""
    made = {out: node.op_type for node in graph.node for out in node.output}
    return {o.name: made.get(o.name, "") for o in graph.output}
