"""The model card shows what gate rules read besides metrics: the version's and the model's
labels, the version's description, and data validation feature by feature."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def _shifted_holdout(trained: TrainedModel, folder: Path, feature: str) -> tuple[Path, float]:
    """The holdout split with ``feature`` of every fourth row set far above anything the train
    split holds, and the share of its values outside the train split's range."""
    table = pacsv.read_csv(trained.holdout)
    train = pq.read_table(trained.train).column(feature).to_numpy()
    values = table.column(feature).to_numpy().copy()
    values[::4] = train.max() * 10
    table = table.set_column(table.column_names.index(feature), feature, pa.array(values))
    path = folder / "holdout-shifted.parquet"
    pq.write_table(table, path)
    outside = np.count_nonzero((values < train.min()) | (values > train.max())) / len(values)
    return path, outside


class _Cells(HTMLParser):
    """The table rows of an HTML page, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _md_row(md: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in the card")


def test_card_shows_labels_description_and_each_feature_checked(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    feature = "mean_area"
    data, outside = _shifted_holdout(trained_model, tmp_path, feature)
    assert 0.2 < outside < 0.3
    model_id = unique()
    with controlplane.client("alice") as alice:
        alice.create_model(model_id, labels={"team": "risk"})
        version = int(
            alice.register_version(
                model_id,
                trained_model.onnx,
                datasets={"train": trained_model.train},
                label="target",
                description="Retrained on <March> data",
                labels={"stage": "beta"},
            ).version
        )
        alice.operation_result(alice.evaluate(model_id, version, data, label="target"))
        md = alice.model_card(model_id, version).content
        page = alice.model_card(model_id, version, format="html").content

    # Markdown: labels and the description in the Version section, escaped as the rest is.
    assert _md_row(md, "labels")[1] == "stage=beta"
    assert _md_row(md, "model labels")[1] == "team=risk"
    version_section = md.split("## Version", 1)[1].split("## ", 1)[0]
    assert "Retrained on &lt;March&gt; data" in version_section
    # The shifted feature's row: numeric, its out-of-range share as validation measured it.
    assert "## Data validation by feature" in md
    row = _md_row(md, feature)
    assert row[1] == "numeric"
    assert float(row[4]) == float(f"{outside:.6g}")
    assert any(
        f"'{feature}'" in line and "outside the baseline range" in line for line in md.splitlines()
    )
    untouched = _md_row(md, "mean_radius")
    assert untouched[4] == "0" and untouched[5] == "n/a"
    assert _md_row(md, "limit max_out_of_range_share")[1] == "0.05"
    assert _md_row(md, "passed")[1] == "False"

    # HTML: the same facts, every value escaped.
    parsed = _Cells()
    parsed.feed(page)
    cells = {r[0]: r[1:] for r in parsed.rows if r}
    assert cells["labels"] == ["stage=beta"] and cells["model labels"] == ["team=risk"]
    assert "<p>Retrained on &lt;March&gt; data</p>" in page
    assert cells[feature][0] == "numeric" and float(cells[feature][3]) == float(f"{outside:.6g}")
    assert "<h2>Data validation by feature</h2>" in page
    # Both formats show the same sections in the same order.
    assert re.findall(r"^## (.+)$", md, re.M) == re.findall(r"<h2>(.+?)</h2>", page)
