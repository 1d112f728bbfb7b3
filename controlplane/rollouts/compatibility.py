"""Whether a candidate version can take a champion's traffic: every request the champion
accepts must fit the candidate, and every output a caller may ask the champion for must come
back from the candidate in the same form.

A rollout routes live requests, unchanged, to the candidate. One that refuses them as bad
input would look healthy to the guards (a caller's bad input is not the model's error), so
such a candidate is refused when the rollout starts, naming the differences.
"""

from __future__ import annotations

from collections.abc import Callable

from controlplane.domain import Signature, TensorSpec

#: Differences listed in a refusal; the rest are counted.
SHOWN = 5


def _dims(shape: list[int]) -> str:
    return "[" + ", ".join("-1" if d < 0 else str(d) for d in shape) + "]"


def _takes(candidate: TensorSpec, champion: TensorSpec) -> bool:
    """Whether every shape the champion's input accepts fits the candidate's."""
    return len(candidate.shape) == len(champion.shape) and all(
        c < 0 or c == p for c, p in zip(candidate.shape, champion.shape, strict=True)
    )


def _gives(candidate: TensorSpec, champion: TensorSpec) -> bool:
    """Whether the candidate's output has the champion's form: rank, and dims fixed in both
    agree."""
    return len(candidate.shape) == len(champion.shape) and all(
        c < 0 or p < 0 or c == p for c, p in zip(candidate.shape, champion.shape, strict=True)
    )


def _changes(
    kind: str,
    champion: list[TensorSpec],
    candidate: list[TensorSpec],
    fits: Callable[[TensorSpec, TensorSpec], bool],
) -> list[str]:
    """How the candidate's tensors of ``kind`` miss the champion's: missing, another datatype,
    or a shape ``fits(candidate's, champion's)`` refuses."""
    theirs = {t.name: t for t in candidate}
    out: list[str] = []
    for p in champion:
        c = theirs.get(p.name)
        if c is None:
            out.append(f"{kind} {p.name!r} is missing")
        elif c.datatype != p.datatype:
            out.append(f"{kind} {p.name!r} is {c.datatype}, not {p.datatype}")
        elif not fits(c, p):
            out.append(f"{kind} {p.name!r} has shape {_dims(c.shape)}, not {_dims(p.shape)}")
    return out


def interface_changes(champion: Signature, candidate: Signature) -> list[str]:
    """What keeps ``candidate`` from answering the champion's requests as the champion does;
    empty when nothing does. A new input is a change (requests do not carry it); a new output
    is not (nobody asks for it)."""
    ours = {t.name for t in champion.inputs}
    return [
        *_changes("input", champion.inputs, candidate.inputs, _takes),
        *(f"input {t.name!r} is new" for t in candidate.inputs if t.name not in ours),
        *_changes("output", champion.outputs, candidate.outputs, _gives),
    ]


def describe(changes: list[str]) -> str:
    """``changes`` as one clause: the first :data:`SHOWN`, then how many more."""
    shown = "; ".join(changes[:SHOWN])
    more = len(changes) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")
