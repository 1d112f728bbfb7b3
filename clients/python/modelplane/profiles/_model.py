"""The baseline profile: what a model version's training data looked like, per feature.

A profile serialises to canonical JSON (sorted keys, no whitespace, exact float repr), so the
same data always gives the same bytes and the same digest. The bounded reference sample is
stored as base64 of little-endian float64 values, which keeps every value exact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from modelplane.errors import InvalidArgument

FORMAT = "modelplane.baseline-profile"
FORMAT_VERSION = 1


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_PROFILE")


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, eq=False)
class NumericFeature:
    """Summary of one numeric feature.

    ``edges`` are the interior bin edges (strictly increasing); with ``k`` edges there are
    ``k + 1`` bins, the first open to -inf and the last to +inf. A value ``x`` falls in bin
    ``searchsorted(edges, x, side="right")``, so a value equal to an edge belongs to the bin
    on its right. ``missing`` counts nulls, NaN and infinities; every other statistic is over
    the ``count`` finite values. ``sample`` is the sorted bounded reference sample (float64).
    ``std`` is the population standard deviation. ``min``, ``max``, ``mean`` and ``std`` are
    None when the column has no finite value.
    """

    name: str
    count: int
    missing: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    edges: np.ndarray
    bin_counts: np.ndarray
    sample: np.ndarray
    kind: str = field(default="numeric", init=False)

    def _to_json(self) -> dict[str, Any]:
        sample = np.ascontiguousarray(self.sample, dtype="<f8")
        return {
            "name": self.name,
            "kind": self.kind,
            "count": int(self.count),
            "missing": int(self.missing),
            "min": _opt_float(self.min),
            "max": _opt_float(self.max),
            "mean": _opt_float(self.mean),
            "std": _opt_float(self.std),
            "edges": [float(e) for e in self.edges],
            "bin_counts": [int(c) for c in self.bin_counts],
            "sample_count": len(sample),
            "sample": base64.b64encode(sample.tobytes()).decode("ascii"),
        }

    @classmethod
    def _from_json(cls, doc: Mapping[str, Any]) -> NumericFeature:
        sample = np.frombuffer(base64.b64decode(doc["sample"], validate=True), dtype="<f8")
        if len(sample) != int(doc["sample_count"]):
            raise _invalid(f"feature {doc['name']!r}: the sample does not hold sample_count values")
        edges = np.asarray(doc["edges"], dtype=np.float64)
        counts = np.asarray(doc["bin_counts"], dtype=np.int64)
        if len(counts) != len(edges) + 1:
            raise _invalid(f"feature {doc['name']!r}: bin_counts must have len(edges) + 1 entries")
        return cls(
            name=str(doc["name"]),
            count=int(doc["count"]),
            missing=int(doc["missing"]),
            min=_opt_float(doc["min"]),
            max=_opt_float(doc["max"]),
            mean=_opt_float(doc["mean"]),
            std=_opt_float(doc["std"]),
            edges=edges,
            bin_counts=counts,
            sample=sample.astype(np.float64),
        )


@dataclass(frozen=True, eq=False)
class CategoricalFeature:
    """Summary of one categorical feature (string, boolean or dictionary column).

    ``categories`` maps each category (booleans as ``"true"``/``"false"``, dictionary values
    as their string form) to its count, sorted by category; ``missing`` counts nulls.
    """

    name: str
    count: int
    missing: int
    categories: dict[str, int]
    kind: str = field(default="categorical", init=False)

    def _to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "count": int(self.count),
            "missing": int(self.missing),
            "categories": {str(k): int(v) for k, v in self.categories.items()},
        }

    @classmethod
    def _from_json(cls, doc: Mapping[str, Any]) -> CategoricalFeature:
        categories = {str(k): int(v) for k, v in sorted(doc["categories"].items())}
        return cls(
            name=str(doc["name"]),
            count=int(doc["count"]),
            missing=int(doc["missing"]),
            categories=categories,
        )


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True, eq=False)
class BaselineProfile:
    """Per-feature summary of a dataset, in feature order; the drift engine's reference.

    Two profiles are equal when their canonical bytes are equal.
    """

    row_count: int
    features: tuple[Feature, ...]
    bins: int = 10
    sample_size: int = 10_000
    seed: int = 0

    @property
    def feature_names(self) -> list[str]:
        """The feature names in order."""
        return [f.name for f in self.features]

    @cached_property
    def _by_name(self) -> dict[str, Feature]:
        # Built once, so that looking up every feature of a wide profile stays linear.
        return {feat.name: feat for feat in reversed(self.features)}

    def feature(self, name: str) -> Feature:
        """The summary of feature ``name``; KeyError when the profile has none."""
        return self._by_name[name]

    def to_dict(self) -> dict[str, Any]:
        """The profile as a JSON-ready dictionary (the document :meth:`to_bytes` writes)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "row_count": int(self.row_count),
            "bins": int(self.bins),
            "sample_size": int(self.sample_size),
            "seed": int(self.seed),
            "features": [f._to_json() for f in self.features],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes: sorted keys, no whitespace, exact floats, UTF-8."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical bytes."""
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> BaselineProfile:
        """Rebuild a profile from :meth:`to_dict`'s output; InvalidArgument if malformed."""
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise _invalid(f"not a baseline profile: the 'format' field must be {FORMAT!r}")
        version = doc.get("version")
        if version != FORMAT_VERSION:
            raise _invalid(
                f"baseline profile version {version!r} is not supported "
                f"(this release reads version {FORMAT_VERSION})"
            )
        try:
            features: list[Feature] = []
            for item in doc["features"]:
                if item["kind"] == "numeric":
                    features.append(NumericFeature._from_json(item))
                elif item["kind"] == "categorical":
                    features.append(CategoricalFeature._from_json(item))
                else:
                    raise _invalid(
                        f"feature {item.get('name')!r} has unknown kind {item['kind']!r}"
                    )
            return cls(
                row_count=int(doc["row_count"]),
                features=tuple(features),
                bins=int(doc["bins"]),
                sample_size=int(doc["sample_size"]),
                seed=int(doc["seed"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise _invalid(f"malformed baseline profile: {type(err).__name__}: {err}") from err

    @classmethod
    def from_bytes(cls, data: bytes) -> BaselineProfile:
        """Parse bytes written by :meth:`to_bytes`; InvalidArgument if they are not a profile."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _invalid(f"the baseline profile is not valid JSON: {err}") from err
        return cls.from_dict(doc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaselineProfile):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def sorted_categories(counts: Mapping[str, int] | Sequence[tuple[str, int]]) -> dict[str, int]:
    """Category counts as a dict sorted by category."""
    items = counts.items() if isinstance(counts, Mapping) else counts
    return {str(k): int(v) for k, v in sorted(items)}
