"""Whether a candidate version can take a champion's traffic: every request the champion
accepts must fit the candidate, and every output a caller may ask the champion for must come
back from the candidate in the same form.

A rollout routes live requests, unchanged, to the candidate. One that refuses them as bad
input would look healthy to the guards (a caller's bad input is not the model's error), so
such a candidate is refused when the rollout starts, naming the differences.
"""

from __future__ import annotations

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


def interface_changes(champion: Signature, candidate: Signature) -> list[str]:
    """What keeps ``candidate`` from answering the champion's requests as the champion does;
    empty when nothing does."""
    out: list[str] = []
    theirs = {t.name: t for t in candidate.inputs}
    ours = {t.name for t in champion.inputs}
    for p in champion.inputs:
        c = theirs.get(p.name)
        if c is None:
            out.append(f"input {p.name!r} is missing")
        elif c.datatype != p.datatype:
            out.append(f"input {p.name!r} is {c.datatype}, not {p.datatype}")
        elif not _takes(c, p):
            out.append(f"input {p.name!r} has shape {_dims(c.shape)}, not {_dims(p.shape)}")
    out += [f"input {t.name!r} is new" for t in candidate.inputs if t.name not in ours]
    given = {t.name: t for t in candidate.outputs}
    for p in champion.outputs:
        c = given.get(p.name)
        if c is None:
            out.append(f"output {p.name!r} is missing")
        elif c.datatype != p.datatype:
            out.append(f"output {p.name!r} is {c.datatype}, not {p.datatype}")
        elif not _gives(c, p):
            out.append(f"output {p.name!r} has shape {_dims(c.shape)}, not {_dims(p.shape)}")
    return out


def describe(changes: list[str]) -> str:
    """``changes`` as one clause: the first :data:`SHOWN`, then how many more."""
    shown = "; ".join(changes[:SHOWN])
    more = len(changes) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")
