"""Tests for modelplane.profiles: reading datasets and building baseline profiles."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from modelplane.errors import InvalidArgument
from modelplane.profiles import (
    BaselineProfile,
    CategoricalFeature,
    NumericFeature,
    boolean_spelling,
    build_profile,
    category_strings,
    default_feature_names,
    detect_format,
    load_baseline,
    profile_from_file,
    read_table,
)


def _table(n: int = 2_000, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 2.0, n)
    x[::17] = np.nan
    ints = rng.integers(0, 4, n)
    cats = rng.choice(["red", "green", "blue", ""], n).tolist()
    for i in range(0, n, 13):
        cats[i] = None
    return pa.table(
        {
            "x": pa.array(x),
            "k": pa.array(ints.tolist(), mask=(np.arange(n) % 11 == 0)),
            "colour": pa.array(cats, pa.string()),
            "flag": pa.array((ints % 2 == 0).tolist()),
            "label": pa.array(rng.integers(0, 2, n)),
        }
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _arrow_file_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_stream_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


def test_profiles_do_not_import_numba_or_onnxruntime() -> None:
    code = (
        "import sys, modelplane.profiles as p; "
        "assert 'numba' not in sys.modules and 'onnxruntime' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (_parquet_bytes, "parquet"),
        (_arrow_file_bytes, "arrow"),
        (_arrow_stream_bytes, "arrow"),
        (_csv_bytes, "csv"),
    ],
)
def test_detect_and_read_by_content(tmp_path, writer, expected) -> None:
    table = _table(300).select(["x", "label"])
    data = writer(table)
    assert detect_format(data) == expected
    # A misleading file name must not matter.
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    assert detect_format(path) == expected
    for source in (data, path, str(path)):
        back = read_table(source)
        np.testing.assert_array_equal(back.column("label").to_numpy(), table["label"].to_numpy())
        np.testing.assert_allclose(
            back.column("x").to_numpy(zero_copy_only=False),
            table["x"].to_numpy(zero_copy_only=False),
            rtol=1e-15,
        )


@pytest.mark.parametrize(
    "data",
    [b"", b"PAR1 not really parquet", b"ARROW1\x00\x00garbage", b"\x00\x01\x02\xff\xfe binary"],
)
def test_bad_data_is_invalid_dataset(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        read_table(data)
    assert info.value.reason == "INVALID_DATASET"
    assert info.value.message


def test_truncated_parquet_is_invalid_dataset() -> None:
    data = _parquet_bytes(_table(200))
    with pytest.raises(InvalidArgument) as info:
        read_table(data[: len(data) // 2])
    assert info.value.reason == "INVALID_DATASET"
    assert "parquet" in info.value.message


def test_missing_file_is_invalid_dataset(tmp_path) -> None:
    with pytest.raises(InvalidArgument) as info:
        read_table(tmp_path / "nope.parquet")
    assert info.value.reason == "INVALID_DATASET"
    assert "nope.parquet" in info.value.message


def test_default_feature_names_drop_label() -> None:
    table = _table(50)
    assert default_feature_names(table, "label") == ["x", "k", "colour", "flag"]
    assert default_feature_names(table, None) == table.column_names
    with pytest.raises(InvalidArgument):
        default_feature_names(table, "target")


def test_numeric_feature_statistics() -> None:
    table = _table()
    profile = build_profile(table, ["x", "k"], bins=10, sample_size=500, seed=3)
    x = profile.feature("x")
    assert isinstance(x, NumericFeature)
    raw = table["x"].to_numpy(zero_copy_only=False)
    finite = raw[np.isfinite(raw)]
    assert x.count == len(finite)
    assert x.missing == int(np.isnan(raw).sum())
    assert x.min == finite.min() and x.max == finite.max()
    assert x.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert x.std == pytest.approx(finite.std(), rel=1e-12)
    np.testing.assert_allclose(x.edges, np.quantile(finite, np.arange(1, 10) / 10), rtol=1e-12)
    assert int(x.bin_counts.sum()) == x.count
    # Every finite value falls in the bin numpy.digitize puts it in.
    expected = np.bincount(np.digitize(finite, x.edges, right=False), minlength=len(x.edges) + 1)
    np.testing.assert_array_equal(x.bin_counts, expected)
    assert len(x.sample) == 500
    assert np.all(np.diff(x.sample) >= 0)
    assert np.isin(x.sample, finite).all()
    assert x.sample.dtype == np.float64


def test_integer_column_with_nulls_and_ties() -> None:
    table = _table()
    k = build_profile(table, ["k"]).feature("k")
    assert isinstance(k, NumericFeature)
    values = [v for v in table["k"].to_pylist() if v is not None]
    assert k.missing == table["k"].null_count
    assert k.count == len(values)
    # Four distinct values: quantile edges collapse and stay strictly increasing.
    assert np.all(np.diff(k.edges) > 0)
    assert set(k.edges) <= {0.0, 1.0, 2.0, 3.0}
    assert int(k.bin_counts.sum()) == k.count
    # Whole column kept as the sample (fewer values than sample_size), sorted.
    np.testing.assert_array_equal(k.sample, np.sort(np.asarray(values, dtype=np.float64)))


def test_categorical_counts_match_counter() -> None:
    table = _table()
    profile = build_profile(table, ["colour", "flag"])
    colour = profile.feature("colour")
    flag = profile.feature("flag")
    assert isinstance(colour, CategoricalFeature) and isinstance(flag, CategoricalFeature)
    values = table["colour"].to_pylist()
    # An empty text is missing, not a category (as an empty CSV cell reads).
    present = [v for v in values if v]
    expected = Counter(present)
    assert colour.categories == dict(expected)
    assert list(colour.categories) == sorted(expected)
    assert colour.missing == len(values) - len(present)
    assert colour.count == len(present)
    flags = Counter("true" if v else "false" for v in table["flag"].to_pylist())
    assert flag.categories == dict(flags)


def test_dictionary_column_is_categorical() -> None:
    arr = pa.array(["a", "b", None, "a"]).dictionary_encode()
    feat = build_profile(pa.table({"d": arr}), ["d"]).feature("d")
    assert isinstance(feat, CategoricalFeature)
    assert feat.categories == {"a": 2, "b": 1} and feat.missing == 1


def test_constant_and_all_missing_columns() -> None:
    table = pa.table(
        {
            "const": pa.array([2.5] * 40),
            "empty": pa.array([None] * 40, pa.float64()),
            "nan": pa.array([np.nan] * 39 + [np.inf]),
        }
    )
    profile = build_profile(table, [])
    const = profile.feature("const")
    assert isinstance(const, NumericFeature)
    np.testing.assert_array_equal(const.edges, [2.5])
    np.testing.assert_array_equal(const.bin_counts, [0, 40])
    assert const.std == 0.0 and const.min == const.max == 2.5
    for name in ("empty", "nan"):
        feat = profile.feature(name)
        assert isinstance(feat, NumericFeature)
        assert feat.count == 0 and feat.missing == 40
        assert feat.min is None and feat.mean is None and feat.std is None
        assert len(feat.edges) == 0 and feat.bin_counts.tolist() == [0]
        assert len(feat.sample) == 0
    BaselineProfile.from_bytes(profile.to_bytes())


def test_round_trip_and_determinism() -> None:
    table = _table()
    names = default_feature_names(table, "label")
    first = build_profile(table, names, sample_size=300, seed=9)
    second = build_profile(table, names, sample_size=300, seed=9)
    assert first.to_bytes() == second.to_bytes()
    assert first.digest() == second.digest()
    back = BaselineProfile.from_bytes(first.to_bytes())
    assert back == first
    assert back.to_bytes() == first.to_bytes()
    assert back.feature_names == names
    x0, x1 = first.feature("x"), back.feature("x")
    assert isinstance(x0, NumericFeature) and isinstance(x1, NumericFeature)
    np.testing.assert_array_equal(x0.sample, x1.sample)
    other_seed = build_profile(table, names, sample_size=300, seed=10)
    assert other_seed.digest() != first.digest()


def test_feature_order_is_kept() -> None:
    table = _table(100)
    profile = build_profile(table, ["flag", "x"])
    assert profile.feature_names == ["flag", "x"]
    assert profile.row_count == 100


def test_unknown_and_unsupported_features() -> None:
    table = pa.table({"when": pa.array([1, 2], pa.timestamp("s")), "x": [1.0, 2.0]})
    with pytest.raises(InvalidArgument) as info:
        build_profile(table, ["missing"])
    assert info.value.reason == "INVALID_DATASET" and "missing" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        build_profile(table, ["when"])
    assert info.value.metadata == {"feature": "when"}
    with pytest.raises(InvalidArgument):
        build_profile(table, ["x", "x"])


def test_bad_profile_bytes() -> None:
    for data in (
        b"{not json",
        b'{"format": "other"}',
        b'{"format": "modelplane.baseline-profile"}',
    ):
        with pytest.raises(InvalidArgument) as info:
            BaselineProfile.from_bytes(data)
        assert info.value.reason == "INVALID_PROFILE"


def test_load_baseline_from_profile_or_data(tmp_path) -> None:
    table = _table(500)
    data_path = tmp_path / "train.parquet"
    pq.write_table(table, data_path)
    from_data = load_baseline(data_path, label="label")
    assert from_data.feature_names == ["x", "k", "colour", "flag"]
    profile_path = tmp_path / "baseline.json"
    profile_path.write_bytes(from_data.to_bytes())
    assert profile_from_file(profile_path) == from_data
    assert load_baseline(data_path, feature_names=["x"]).feature_names == ["x"]
    csv_path = tmp_path / "train.csv"
    csv_path.write_bytes(_csv_bytes(table.select(["x", "label"])))
    assert profile_from_file(csv_path, label="label").feature_names == ["x"]


def test_wide_64_bit_integers_are_profiled_as_floats() -> None:
    # Epoch nanoseconds and ids pass 2**53; uint64 reaches 2**64 - 1: none fits a float64
    # exactly, and a profile does not need it to.
    nanos = [1_700_000_000_123_456_789 + i * 1_000_000_001 for i in range(5)]
    table = pa.table(
        {
            "nanos": pa.array(nanos, pa.int64()),
            "ids": pa.array([0, 1, 2**63, 2**64 - 1, None], pa.uint64()),
        }
    )
    profile = build_profile(table, [], bins=2)
    time = profile.feature("nanos")
    assert isinstance(time, NumericFeature)
    assert time.count == 5 and time.min == float(nanos[0]) and time.max == float(nanos[-1])
    ids = profile.feature("ids")
    assert isinstance(ids, NumericFeature)
    assert ids.count == 4 and ids.missing == 1 and ids.max == float(2**64 - 1)
    for data in (_parquet_bytes(table), _csv_bytes(table)):
        assert load_baseline(data).feature_names == ["nanos", "ids"]


@pytest.mark.parametrize("label", [None, "a", "b"])
def test_a_repeated_column_name_is_invalid_dataset(label: str | None) -> None:
    data = b"a,a,b\n1,2,3\n4,5,6\n"
    for call in (
        lambda: read_table(data),
        lambda: load_baseline(data, label=label),
        lambda: load_baseline(data, feature_names=["a", "b"]),
    ):
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.reason == "DUPLICATE_COLUMNS"
        assert "'a'" in info.value.message and info.value.metadata == {"columns": "a"}
    # A table built in memory is refused by the profiling functions themselves.
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["a", "a"])
    for call in (
        lambda: default_feature_names(table, label),
        lambda: build_profile(table, ["a"]),
        lambda: build_profile(table, []),
    ):
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.reason == "DUPLICATE_COLUMNS" and "'a'" in info.value.message


def test_csv_true_false_text_stays_the_category_served_strings_carry() -> None:
    # pandas writes booleans as True/False; a BYTES input carrying the same rows sends the
    # strings "True"/"False", which must match the profile's categories.
    rows = [
        f"{i / 10},{'True' if i % 3 else 'False'},{'true' if i % 2 else 'false'}" for i in range(30)
    ]
    data = ("x,flag,lower\n" + "\n".join(rows) + "\n").encode()
    profile = load_baseline(data)
    flag = profile.feature("flag")
    assert isinstance(flag, CategoricalFeature)
    assert flag.categories == {"True": 20, "False": 10}
    # Lowercase text reads as boolean and stringifies back to the same text.
    lower = profile.feature("lower")
    assert isinstance(lower, CategoricalFeature)
    assert lower.categories == {"true": 15, "false": 15}
    # read_table keeps reading every spelling as boolean by default (evaluation datasets
    # feed such columns to BOOL inputs and use them as labels).
    assert read_table(data).schema.field("flag").type == pa.bool_()
    assert read_table(data, text_booleans=True).schema.field("flag").type == pa.string()


@pytest.mark.parametrize("cells", ["", "NaN", "nan"])
def test_an_all_missing_csv_column_is_numeric_like_its_parquet_float64(cells: str) -> None:
    data = "".join(f"{a},{cells}\n" for a in (1.5, 2.5, 3.5))
    from_csv = load_baseline(("a,b\n" + data).encode())
    as_float = pa.table({"a": [1.5, 2.5, 3.5], "b": pa.array([None] * 3, pa.float64())})
    from_parquet = load_baseline(_parquet_bytes(as_float))
    b = from_csv.feature("b")
    assert isinstance(b, NumericFeature)
    assert b.count == 0 and b.missing == 3 and b.min is None
    assert from_csv.to_bytes() == from_parquet.to_bytes()
    # The same holds for a null-typed column handed to build_profile directly.
    null_column = pa.table({"a": as_float["a"], "b": pa.nulls(3)})
    assert build_profile(null_column, []).to_bytes() == from_parquet.to_bytes()


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        (["False", "True"], ("True", "False")),
        (["true", "false"], ("true", "false")),
        (["TRUE"], ("TRUE", "FALSE")),
        (["False"], ("True", "False")),
        (["false"], ("true", "false")),
        (["True", "true"], None),
        (["True", "False", "maybe"], None),
        (["yes", "no"], None),
        ([], None),
    ],
)
def test_boolean_spelling(categories: list[str], expected: tuple[str, str] | None) -> None:
    assert boolean_spelling(categories) == expected


def test_served_booleans_take_the_baselines_spelling() -> None:
    served = pa.array([True, None, False, True])
    assert category_strings(served).to_pylist() == ["true", None, "false", "true"]
    assert category_strings(served, ("True", "False")).to_pylist() == [
        "True",
        None,
        "False",
        "True",
    ]
    # Text is never respelled.
    assert category_strings(pa.array(["true"]), ("True", "False")).to_pylist() == ["true"]


def test_a_csv_with_multi_line_cells_reads_whatever_its_size(tmp_path) -> None:
    """Quoted cells holding line breaks (as pandas writes free text) in a CSV larger than the
    reader's 1 MiB block, whose boundaries fall inside such cells."""
    rows = 10_000
    notes = [f"line one {i}\n" + "w" * 200 for i in range(rows)]
    frame = pd.DataFrame({"x": np.arange(rows, dtype=np.float64), "note": notes})
    path = tmp_path / "notes.csv"
    frame.to_csv(path, index=False)
    assert path.stat().st_size > 2 * 2**20
    for source in (path, path.read_bytes()):
        table = read_table(source)
        assert table.num_rows == rows
        assert table.column("note").to_pylist() == notes
    note = load_baseline(path).feature("note")
    assert isinstance(note, CategoricalFeature)
    assert note.count == rows and note.missing == 0


def test_csv_and_parquet_copies_of_one_frame_give_one_profile() -> None:
    """An empty CSV cell is missing in a text column as in a number column (pandas writes None
    so); an empty text is missing in any format, as a CSV cannot tell it from none."""
    frame = pd.DataFrame(
        {
            "city": ["Paris", None, "Oslo", None, "", "Paris"],
            "flag": ["True", "False", None, "True", "True", "False"],
            "x": [1.0, None, 3.0, 4.0, 5.0, 6.0],
        }
    )
    csv = frame.to_csv(index=False).encode()
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    from_csv, from_parquet = load_baseline(csv), load_baseline(sink.getvalue())
    assert from_csv.to_bytes() == from_parquet.to_bytes()
    city = from_csv.feature("city")
    assert isinstance(city, CategoricalFeature)
    assert city.categories == {"Oslo": 1, "Paris": 2} and city.missing == 3
    assert read_table(csv).column("city").to_pylist() == [
        "Paris",
        None,
        "Oslo",
        None,
        None,
        "Paris",
    ]


def test_text_spelled_like_a_null_stays_text_in_a_csv() -> None:
    """Only an empty cell is missing in a text column: ``NA`` (a country code), ``null`` and
    ``N/A`` stay categories, as in a Parquet copy of the same frame, while a number column
    still reads them as missing."""
    frame = pd.DataFrame({"country": ["NA", "US", "", "null", "N/A", "NA"], "x": [1.0] * 6})
    csv = frame.to_csv(index=False).encode()
    frame.loc[2, "country"] = None
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    from_csv, from_parquet = load_baseline(csv), load_baseline(sink.getvalue())
    assert from_csv.to_bytes() == from_parquet.to_bytes()
    country = from_csv.feature("country")
    assert isinstance(country, CategoricalFeature)
    assert country.categories == {"NA": 2, "US": 1, "null": 1, "N/A": 1}
    assert country.missing == 1
    numbers = read_table(b"x,y\n1.5,a\nNA,b\nnull,c\n,d\n2,e\n").column("x")
    assert numbers.type == pa.float64() and numbers.to_pylist() == [1.5, None, None, None, 2.0]


def test_a_csv_column_of_null_spellings_alone_is_missing() -> None:
    """A column holding null spellings alone (``NA`` everywhere, as R writes a missing number)
    cannot be told from a missing number column: it is missing, while ``NA`` beside other text
    stays text."""
    table = read_table(b"region,mixed,text,x\nNA,NA,NA,1\nNA,,US,2\nNA,null,null,3\n")
    assert table.column("region").null_count == 3
    assert table.column("mixed").null_count == 3
    assert table.column("text").to_pylist() == ["NA", "US", "null"]


def test_a_parquet_file_repeating_a_column_name_is_duplicate_columns(tmp_path) -> None:
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["a", "a"])
    data = _parquet_bytes(table)
    (tmp_path / "dup.parquet").write_bytes(data)
    for call in (
        lambda: read_table(data),
        lambda: read_table(tmp_path / "dup.parquet"),
        lambda: load_baseline(data),
    ):
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.reason == "DUPLICATE_COLUMNS"
        assert "'a'" in info.value.message and info.value.metadata == {"columns": "a"}


def _split_frame() -> pd.DataFrame:
    """Half of a shuffled frame, as ``train_test_split`` gives it: its index is no longer a
    plain range, so pandas writes it into Parquet and Arrow files as a column."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40), "y": [0, 1] * 20})
    return frame.sample(frac=0.5, random_state=0)


def test_an_unnamed_pandas_index_is_not_read_as_a_feature(tmp_path: Path) -> None:
    half = _split_frame()
    half.to_parquet(tmp_path / "train.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "train.parquet").names
    with ipc.new_file(tmp_path / "train.arrow", pa.Schema.from_pandas(half)) as writer:
        writer.write_table(pa.Table.from_pandas(half))
    for name in ("train.parquet", "train.arrow"):
        table = read_table(tmp_path / name)
        assert table.column_names == ["a", "b", "y"], name
        assert table.column("a").to_pylist() == half["a"].tolist()
        profile = load_baseline(tmp_path / name, label="y")
        assert [f.name for f in profile.features] == ["a", "b"], name


def test_a_named_pandas_index_stays_a_column(tmp_path: Path) -> None:
    half = _split_frame().rename_axis("row_id")
    half.to_parquet(tmp_path / "named.parquet")
    table = read_table(tmp_path / "named.parquet")
    assert table.column_names == ["a", "b", "y", "row_id"]
    assert table.column("row_id").to_pylist() == half.index.tolist()


def test_pandas_metadata_naming_a_missing_or_odd_index_changes_nothing(tmp_path: Path) -> None:
    table = pa.table({"__index_level_0__": [1, 2], "x": [0.5, 1.5]})
    for metadata in (
        b'{"index_columns": ["__index_level_3__"]}',  # not in the file
        b'{"index_columns": [{"kind": "range"}]}',  # a range index is stored as no column
        b"not json",
        b"[]",
    ):
        pq.write_table(table.replace_schema_metadata({b"pandas": metadata}), tmp_path / "t.pq")
        assert read_table(tmp_path / "t.pq").column_names == ["__index_level_0__", "x"]
