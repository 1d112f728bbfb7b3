"""The ONNX model under evaluation: its session, which outputs carry scores, and its classes.

Task detection, from the signature's outputs (``task=None``):

* a float output ``[-1, C]`` with ``C >= 2`` (or a dynamic ``C`` that turns out ``>= 2``)
  makes a classifier; its columns are class probabilities in class order;
* otherwise exactly one float output ``[-1]`` or ``[-1, 1]`` makes a binary classifier, the
  column being the probability of the second class (as a sigmoid head exported from torch or
  keras gives it), when it is a probability by the rule the managed sidecar applies too
  (:mod:`modelplane.output_kinds`): the graph node producing it is ``Sigmoid`` or
  ``Softmax``, or its name contains ``prob``; or when the model has a label output (below)
  whose name contains ``label`` (``label``, ``output_label``, ``predicted_label``). Otherwise
  it makes a regressor, also beside other integer, string or boolean outputs (a ``count``
  rounded from the prediction); the report then warns (REGRESSION_ASSUMED) that setting the
  task to classification reads the column as a probability instead.

``task="classification"`` also accepts one float column ``[-1]`` / ``[-1, 1]`` as the
probability of the second class of a binary problem, or as its logit (a decision-function
score) when its values leave [0, 1]; ``task="regression"`` reads it as the
prediction even when a label output exists. When several outputs qualify, the one named
``probabilities`` / ``probability`` / ``output_probability`` wins, or the caller names it.
A classifier's labels come from an integer, string or boolean output ``[-1]`` / ``[-1, 1]``
(skl2onnx's ``label``; among several, ``label``, ``output_label``, or the only one whose name
contains ``label``). A boolean label output makes the classes ``[False, True]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from controlplane.domain import Signature, TensorSpec
from controlplane.evaluation._errors import invalid
from modelplane.output_kinds import column_is_classifier, is_label_name, output_producers

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
LABEL_DATATYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BYTES", "BOOL"}
)
_PREFERRED_SCORES = ("probabilities", "probability", "output_probability")
_PREFERRED_LABELS = ("label", "output_label")
_ORT_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
    **{f"tensor({t.lower()})": t for t in ("INT8", "INT16", "INT32", "INT64")},
    **{f"tensor(uint{b})": f"UINT{b}" for b in (8, 16, 32, 64)},
}


def open_session(onnx_bytes: bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; INVALID_ONNX_MODEL when ONNX Runtime cannot load the bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise invalid(
            "INVALID_ONNX_MODEL", f"ONNX Runtime cannot load the model: {first}"
        ) from None


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise invalid(
            "UNUSABLE_MODEL_OUTPUT",
            f"model tensor {arg.name!r} has type {arg.type}; evaluation needs plain tensors "
            "(for skl2onnx classifiers export with options={'zipmap': False})",
            tensor=arg.name,
        )
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
    return TensorSpec(arg.name, datatype, shape)


def session_signature(session: ort.InferenceSession) -> Signature:
    """The signature ONNX Runtime reports for a loaded model."""
    return Signature(
        inputs=[_spec(a) for a in session.get_inputs()],
        outputs=[_spec(a) for a in session.get_outputs()],
    )


def check_signature(signature: Signature, session: ort.InferenceSession) -> None:
    """SIGNATURE_MISMATCH unless the signature names the model's own inputs and outputs."""
    want_in = sorted(s.name for s in signature.inputs)
    have_in = sorted(a.name for a in session.get_inputs())
    want_out = {s.name for s in signature.outputs}
    have_out = {a.name for a in session.get_outputs()}
    if want_in != have_in or not want_out <= have_out:
        raise invalid(
            "SIGNATURE_MISMATCH",
            f"the signature (inputs {want_in}, outputs {sorted(want_out)}) does not describe "
            f"this model (inputs {have_in}, outputs {sorted(have_out)}); re-read the signature "
            "from the artifact",
        )


def _is_column(spec: TensorSpec) -> bool:
    return len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1)


def _pick(candidates: list[TensorSpec], preferred: Sequence[str]) -> TensorSpec | None:
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        for spec in candidates:
            if spec.name == name:
                return spec
    return None


@dataclass(frozen=True)
class OutputPlan:
    """Which output holds the scores, which the labels, and the task (None: decided by the
    width of the score output once it has run); ``unused_labels`` are the integer, string or
    boolean outputs of a model detected as a regressor."""

    task: str | None
    score: str
    label: str | None
    unused_labels: tuple[str, ...] = field(default=())


def _no_producer(name: str) -> str:
    return ""


def plan_outputs(
    outputs: list[TensorSpec],
    task: str | None,
    output: str | None,
    producer: Callable[[str], str] = _no_producer,
) -> OutputPlan:
    """Choose the score and label outputs for ``task`` (see the module docstring);
    ``producer`` gives the op type of the node making an output (``ModelGraph.producer``)."""
    floats = [o for o in outputs if o.datatype in FLOAT_DATATYPES]
    matrices = [o for o in floats if len(o.shape) == 2 and o.shape[1] != 1]
    columns = [o for o in floats if _is_column(o)]
    described = ", ".join(f"{o.name} {o.datatype} {o.shape}" for o in outputs)
    if output is not None:
        named = [o for o in floats if o.name == output and (o in matrices or o in columns)]
        if not named:
            raise invalid(
                "UNUSABLE_MODEL_OUTPUT",
                f"output {output!r} is not a float output of shape [-1], [-1, 1] or [-1, C] "
                f"(outputs: {described})",
                output=output,
            )
        matrices = [o for o in matrices if o.name == output]
        columns = [o for o in columns if o.name == output]
    labels = [o for o in outputs if o.datatype in LABEL_DATATYPES and _is_column(o)]
    unused: tuple[str, ...] = ()
    if task is None:
        if matrices:
            chosen = _pick(matrices, _PREFERRED_SCORES)
            resolved = "classification" if chosen and chosen.shape[1] > 1 else None
        elif len(columns) == 1:
            chosen = columns[0]
            names = [o.name for o in labels]
            is_classifier = column_is_classifier(chosen.name, producer(chosen.name), names)
            resolved = "classification" if is_classifier else "regression"
            if not is_classifier and names:
                unused = tuple(names)
        else:
            chosen, resolved = None, None
    elif task == "classification":
        chosen = _pick(matrices, _PREFERRED_SCORES) or _pick(columns, _PREFERRED_SCORES)
        resolved = task
    else:
        chosen = _pick(columns, ())
        resolved = task
    if chosen is None:
        kind = task or "classification or regression"
        raise invalid(
            "UNUSABLE_MODEL_OUTPUT",
            f"no output fits {kind}: a classifier needs one float output [-1, C] of class "
            "probabilities, a regressor one float output [-1] or [-1, 1]; this model has "
            f"{described}. Name the output to use, or set the task",
        )
    label = None
    if resolved != "regression":
        picked = _pick(labels, _PREFERRED_LABELS) or _pick(
            [o for o in labels if is_label_name(o.name)], ()
        )
        label = picked.name if picked else None
    return OutputPlan(resolved, chosen.name, label, unused)


def _decode(values: list[Any]) -> list[int] | list[str] | list[bool]:
    if values and isinstance(values[0], bytes):
        return [v.decode("utf-8") for v in values]
    if values and isinstance(values[0], str):
        return [str(v) for v in values]
    if values and isinstance(values[0], bool | np.bool_):
        return [bool(v) for v in values]
    return [int(v) for v in values]


class ModelGraph:
    """What evaluation reads from the ONNX graph itself, parsed once when first asked: the
    op type producing each graph output, and the class-label tables the graph carries (a
    classifier node's ``classlabels_*`` attribute, or the constant table an
    ``ArrayFeatureExtractor`` maps the arg-max through). A graph the onnx package cannot
    parse has neither."""

    def __init__(self, onnx_bytes: bytes) -> None:
        self._bytes = onnx_bytes
        self._producers: dict[str, str] = {}
        self._margins: set[str] = set()
        self._tables: list[tuple[Any, ...]] | None = None

    def _load(self) -> list[tuple[Any, ...]]:
        if self._tables is not None:
            return self._tables
        self._tables = []
        try:
            model = onnx.load_from_string(self._bytes)
        except Exception:
            return self._tables
        self._producers = output_producers(model.graph)
        self._margins = {o.name for o in model.graph.output if _margin_scores(model.graph, o.name)}
        inits = {i.name: i for i in model.graph.initializer}
        found: set[tuple[Any, ...]] = set()
        for node in model.graph.node:
            for attr in node.attribute:
                if attr.name in ("classlabels_ints", "classlabels_int64s") and attr.ints:
                    found.add(tuple(_decode(list(attr.ints))))
                elif attr.name == "classlabels_strings" and attr.strings:
                    found.add(tuple(_decode(list(attr.strings))))
            if node.op_type == "ArrayFeatureExtractor" and node.input[0] in inits:
                table = numpy_helper.to_array(inits[node.input[0]]).ravel()
                if table.dtype.kind in "iuSUO":
                    found.add(tuple(_decode(table.tolist())))
        self._tables = sorted(found, key=repr)
        return self._tables

    def producer(self, output: str) -> str:
        """The op type of the node producing graph output ``output`` ("" if none)."""
        self._load()
        return self._producers.get(output, "")

    def margins(self, output: str) -> bool:
        """Whether graph output ``output`` holds a linear or SVM classifier's decision-function
        scores (margins), whatever their values: see :func:`_margin_scores`."""
        self._load()
        return output in self._margins

    def classes(self, width: int) -> list[int] | list[str] | None:
        """The class labels in probability-column order, if the graph names exactly one list
        of ``width`` labels."""
        fitting = [c for c in self._load() if len(c) == width]
        return list(fitting[0]) if len(fitting) == 1 else None


#: Ops that select, reshape or convert their first input's scores without changing them.
_SCORE_PASSES = frozenset(
    {"Identity", "Cast", "ArrayFeatureExtractor", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
)
#: ONNX-ML classifier ops whose second output is one score per class.
_SCORING_CLASSIFIERS = frozenset({"LinearClassifier", "SVMClassifier"})


def _margin_scores(graph: Any, output: str) -> bool:
    """Whether ``output`` is, up to ops that only select or reshape it, the scores of a
    ``LinearClassifier`` or ``SVMClassifier`` without a post-transform (and, for an SVM,
    without Platt scaling, ``prob_a``): decision-function values, thresholded at 0, which may
    all fall inside [0, 1] (a strongly regularised RidgeClassifier or LinearSVC, as skl2onnx
    exports them) and must not then be read as probabilities."""
    made = {out: (node, i) for node in graph.node for i, out in enumerate(node.output)}
    name = output
    for _ in range(len(graph.node) + 1):
        found = made.get(name)
        if found is None:
            return False
        node, index = found
        if node.op_type in _SCORE_PASSES and node.input:
            name = node.input[0]
            continue
        if node.op_type not in _SCORING_CLASSIFIERS or index != 1:
            return False
        attrs = {a.name: a for a in node.attribute}
        transform = attrs["post_transform"].s.decode() if "post_transform" in attrs else "NONE"
        return transform == "NONE" and "prob_a" not in attrs
    return False


def observed_classes(labels: np.ndarray, argmax: np.ndarray, width: int) -> list[Any] | None:
    """The class list read off a run: for each probability column, the label output the model
    gave most often where that column was the largest; None unless every column won at least
    once and the labels are distinct."""
    mapping: list[Any] = []
    for c in range(width):
        seen = labels[argmax == c]
        if len(seen) == 0:
            return None
        values, counts = np.unique(seen, return_counts=True)
        mapping.append(values[int(np.argmax(counts))])
    decoded = _decode([v.item() if isinstance(v, np.generic) else v for v in mapping])
    return decoded if len(set(decoded)) == width else None
