"""A pandas ``category`` string column (Arrow ``dictionary<values=string>``, the usual way to
store a categorical feature in Parquet) feeds a string (BYTES) model input as its text, as
registration's baseline takes it; dictionaries of numbers are refused by name. Driven through
a real control plane with the CLI; metrics checked against scikit-learn on a direct ONNX
Runtime run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli

REGIONS = ["north", "south", "east", "west"]
PLANS = ["basic", "plus", "pro"]


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _frame(seed: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    region = rng.choice(REGIONS, rows)
    plan = rng.choice(PLANS, rows)
    signal = (
        x
        + np.where(region == "north", 1.0, 0.0)
        - np.where(plan == "basic", 0.8, 0.0)
        + rng.normal(scale=0.7, size=rows)
    )
    return pd.DataFrame({"x": x, "region": region, "plan": plan, "y": (signal > 0).astype(int)})


def _categorical(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].astype("category") for c in columns})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A ColumnTransformer pipeline over named columns (x: float; region, plan: strings),
    its train split as Parquet with the string columns stored as categories (the baseline),
    and a holdout frame."""
    folder = tmp_path_factory.mktemp("categorical")
    train, holdout = _frame(0, 600), _frame(1, 400)
    pipe = Pipeline(
        [
            (
                "ct",
                ColumnTransformer(
                    [
                        ("num", "passthrough", ["x"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["region", "plan"]),
                    ]
                ),
            ),
            ("lr", LogisticRegression()),
        ]
    ).fit(train[["x", "region", "plan"]], train.y)
    onnx = to_onnx(
        pipe,
        initial_types=[
            ("x", FloatTensorType([None, 1])),
            ("region", StringTensorType([None, 1])),
            ("plan", StringTensorType([None, 1])),
        ],
        options={id(pipe): {"zipmap": False}},
        target_opset=17,
    )
    (folder / "model.onnx").write_bytes(onnx.SerializeToString())
    _categorical(train, "region", "plan").to_parquet(folder / "train.parquet", index=False)
    return folder / "model.onnx", folder / "train.parquet", holdout


def _register(cli: Cli, onnx: Path, train: Path) -> str:
    name = unique()
    cli.json("models", "create", name)
    cli.json(
        "versions", "register", name, "--onnx", str(onnx), "--dataset", f"train={train}",
        "--label", "y",
    )  # fmt: skip
    return name


def _evaluate(cli: Cli, name: str, data: Path) -> tuple[int, dict | None, str]:  # type: ignore[type-arg]
    code, out, err = cli.run(
        "evaluate", name, "1", "--data", str(data), "--label", "y", "--compare-to", "-", "--wait"
    )
    return code, (json.loads(out) if code == 0 else None), err


def _direct(onnx: Path, frame: pd.DataFrame) -> np.ndarray:
    """Positive-class probabilities from onnxruntime on the plain columns."""
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feeds = {
        "x": frame[["x"]].to_numpy(np.float32),
        "region": frame[["region"]].to_numpy(object),
        "plan": frame[["plan"]].to_numpy(object),
    }
    proba = session.run(None, feeds)[1].astype(np.float64)
    return (proba / proba.sum(axis=1, keepdims=True))[:, 1]


def test_category_string_columns_feed_string_inputs_as_their_text(
    cli: Cli, pipeline: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Before, a category column was refused for the string input: NON_STRING_FEATURE
    ("dictionary<values=string, ...> ... encode it"), though registration took the same file."""
    onnx, train, holdout = pipeline
    name = _register(cli, onnx, train)
    plain = tmp_path / "plain.parquet"
    holdout.to_parquet(plain, index=False)
    categorical = tmp_path / "categorical.parquet"
    _categorical(holdout, "region", "plan").to_parquet(categorical, index=False)
    # Arrow IPC keeps what Parquet does not: a dictionary of large strings.
    large = tmp_path / "large.arrow"
    table = pa.Table.from_pandas(holdout, preserve_index=False)
    for column in ("region", "plan"):
        encoded = table.column(column).cast(pa.large_string()).dictionary_encode()
        table = table.set_column(table.schema.get_field_index(column), column, encoded)
    assert str(table.schema.field("plan").type).startswith("dictionary<values=large_string")
    feather.write_feather(table, large)

    score = _direct(onnx, holdout)
    y = holdout.y.to_numpy()
    reports = {}
    for data in (plain, categorical, large):
        code, result, err = _evaluate(cli, name, data)
        assert code == 0, err
        assert result is not None
        reports[data.name] = result["report"]
    for report in reports.values():
        metrics = report["metrics"]
        assert report["rows"] == len(holdout)
        assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, score > 0.5), abs=1e-9)
        assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-6)
        assert metrics["log_loss"] == pytest.approx(skm.log_loss(y, score), abs=1e-5)
        assert metrics == reports["plain.parquet"]["metrics"]
    # Validated against the baseline as the plain text is: same findings.
    assert reports["categorical.parquet"]["validation"] == reports["plain.parquet"]["validation"]


def test_a_missing_category_is_a_missing_value(
    cli: Cli, pipeline: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    onnx, train, holdout = pipeline
    name = _register(cli, onnx, train)
    frame = _categorical(holdout, "region", "plan")
    frame.loc[3, "region"] = None
    data = tmp_path / "holes.parquet"
    frame.to_parquet(data, index=False)
    code, _, err = _evaluate(cli, name, data)
    assert code != 0
    assert "MISSING_VALUES" in err and "'region'" in err, err
    # A null among the dictionary's values (its indices all set) is missing too.
    table = pa.Table.from_pandas(_categorical(holdout, "region", "plan"), preserve_index=False)
    codes = np.arange(len(holdout)) % 3
    plan = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), ["basic", None, "pro"])
    assert plan.null_count == 0
    table = table.set_column(table.schema.get_field_index("plan"), "plan", plan)
    data = tmp_path / "null_value.arrow"
    feather.write_feather(table, data)
    code, _, err = _evaluate(cli, name, data)
    assert code != 0
    assert "MISSING_VALUES" in err and "'plan'" in err, err


def _arrow(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as an Arrow IPC file: it keeps a category of numbers as a dictionary (a
    Parquet file reads back as the plain numbers)."""
    feather.write_feather(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def test_categories_of_numbers_are_refused_by_name(
    cli: Cli, pipeline: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    """A dictionary of numbers is still no string column, and a float input still needs plain
    numbers: each refusal names the column, its dictionary type and what the input needs."""
    onnx, train, holdout = pipeline
    name = _register(cli, onnx, train)

    numbered = holdout.assign(region=pd.Categorical(holdout.region.map(REGIONS.index)))
    code, _, err = _evaluate(cli, name, _arrow(numbered, tmp_path / "numbered.arrow"))
    assert code != 0
    assert "NON_STRING_FEATURE" in err and "'region'" in err, err
    assert "dictionary<values=int64" in err and "needs string values" in err, err

    binned = _categorical(holdout.assign(x=holdout.x.round(1)), "x")
    code, _, err = _evaluate(cli, name, _arrow(binned, tmp_path / "binned.arrow"))
    assert code != 0
    assert "NON_NUMERIC_FEATURE" in err and "column 'x' is categorical" in err, err
    assert "dictionary-encoded double values" in err and "input 'x' (FP32)" in err, err

    # Strings as categories still cannot feed the float input.
    texts = _categorical(holdout.assign(x=holdout.x.round(1).astype(str)), "x")
    code, _, err = _evaluate(cli, name, _arrow(texts, tmp_path / "texts.arrow"))
    assert code != 0
    assert "NON_NUMERIC_FEATURE" in err and "has type dictionary<values=" in err, err
    assert "encode it" in err, err
