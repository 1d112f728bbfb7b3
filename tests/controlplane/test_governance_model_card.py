"""Model cards rendered by the server: every section present with the registry's facts."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from modelplane.cli import main
from modelplane.errors import InvalidArgument, NotFound
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_evaluation import holdout_with_groups


def governed_version(
    cp: RunningControlPlane, trained: TrainedModel, folder: Path
) -> tuple[str, int]:
    data, _ = holdout_with_groups(trained, folder)
    model_id = unique()
    with cp.client("alice") as alice:
        alice.create_model(
            model_id,
            intended_use="Flag <tumours> for review by a clinician",
            limitations="Trained on one hospital's data | not for children",
        )
        version = int(
            alice.register_version(
                model_id,
                trained.onnx,
                datasets={"train": trained.train},
                label="target",
                params={"C": "1.0"},
                metrics={"train_auc": 0.98765432},
                training_run_id="run-42",
            ).version
        )
        alice.operation_result(
            alice.evaluate(
                model_id, version, data, label="target", slices=["size"], protected=["group"]
            )
        )
        alice.create_policy("card-gate", target="production", rules=["metrics.roc_auc >= 0.9"])
        alice.evaluate_gate(model_id, version, "production")
    with cp.client("rita") as rita:
        rita.with_roles(["risk"]).approve(model_id, version, "production", comment="fine")
    return model_id, version


def test_model_card_in_every_format(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id, version = governed_version(controlplane, trained_model, tmp_path)
    with controlplane.client() as c:
        ev = next(iter(c.list_evaluations(model_id, version)))
        data = json.loads(c.model_card(model_id, version, format="json").content)
        md = c.model_card(model_id, version).content
        page = c.model_card(model_id, version, format="html").content
    assert data["model"]["intended_use"] == "Flag <tumours> for review by a clinician"
    assert data["lineage"]["training_run_id"] == "run-42"
    assert data["evaluation"]["metrics"]["roc_auc"] == pytest.approx(ev.metrics["roc_auc"])
    assert set(data["evaluation"]["slices"]["size"]) == {"large", "small"}
    assert set(data["evaluation"]["fairness"]["group"]["groups"]) == {"a", "b"}
    assert data["evaluation"]["validation"]["passed"] in (True, False)
    assert data["gate_decisions"][0]["target"] == "production"
    assert data["gate_decisions"][0]["passed"] is True
    approval = data["approvals"][0]
    assert approval["approver"] == "rita" and approval["signature"] == "valid"
    assert approval["current"] is True and approval["roles"] == ["risk"]
    for section in (
        "## Intended use",
        "## Limitations",
        "## Lineage",
        "## Evaluation metrics",
        "## Slices",
        "## Fairness",
        "## Data validation",
        "## Gate decisions",
        "## Approvals",
    ):
        assert section in md
    assert f"| roc_auc | {ev.metrics['roc_auc']:.6g} |" in md
    assert "size=large" in md and "group a" in md and "run-42" in md
    # The lineage the trainer recorded, as the JSON card holds it.
    lineage = data["lineage"]
    assert f"| platform | {lineage['environment']['platform']} |" in md
    assert f"| packages | {len(lineage['environment']['packages'])} (listed" in md
    assert lineage["environment"]["packages"]
    train = lineage["datasets"][0]
    assert f"{train['row_count']} rows, {train['format']}) from {train['source']} |" in md
    assert "| training metric train_auc | 0.987654 |" in md and "| parameter C | 1.0 |" in md
    assert "not for children" in md
    assert "&lt;tumours&gt;" in page and "<tumours>" not in page

    class Tables(HTMLParser):
        count = 0

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.count += tag == "table"

    parser = Tables()
    parser.feed(page)
    assert parser.count >= 7
    capsys.readouterr()
    code = main(
        ["--server", controlplane.address, "model-card", model_id, str(version), "--format", "md"]
    )
    assert code == 0 and "# Model card: " in capsys.readouterr().out
    out_file = tmp_path / "card.html"
    code = main(
        [
            "--server",
            controlplane.address,
            "model-card",
            model_id,
            str(version),
            "--format",
            "html",
            "--out",
            str(out_file),
        ]
    )
    assert code == 0 and out_file.read_text() == page


def test_model_card_bad_input(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    with controlplane.client() as c:
        c.create_model("bare")
        with pytest.raises(NotFound):
            c.model_card("bare", 1)
        with pytest.raises(NotFound):
            c.model_card("nothing", 1)
        with pytest.raises(InvalidArgument) as fmt:
            c._call(
                c.governance.GetModelCard,
                __import__("modelplane.v1.governance_pb2", fromlist=["x"]).GetModelCardRequest(
                    name="models/bare/versions/1", format="pdf"
                ),
            )
        assert fmt.value.reason == "INVALID_FORMAT"
    code = main(["--server", controlplane.address, "model-card", "bare", "1"])
    assert code == 3


class _Rendered(HTMLParser):
    """The tags and text of HTML rendered from a card's Markdown."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


HOSTILE = {
    "description": "see [docs](http://evil.example) and <b>bold</b>\n# not a heading"
    "\n\n    not indented code\n\n\tnor this",
    "intended_use": "1. not a list\n- nor this\n> nor a quote\n_under_ *star* `code` a\\|b"
    "\n\n      <not html>\n\n    - nor an indented item\n  \n   # nor a heading",
    "limitations": "a | b <script>x</script> &amp; stays as typed ~~not struck~~ ~nor this~"
    "\nwww.evil.example WWW.evil.example https://evil.example/x ftp://e.example me@evil.example",
}
#: What GitHub-flavoured Markdown turns into a link: a ``www.`` or ``scheme://`` address, and an
#: e-mail address, none of their characters escaped.
GFM_AUTOLINK = re.compile(r"(?i)\bwww\.|[a-z]://|[\w.+-]@[\w-]")


def test_markdown_card_shows_every_value_as_written(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from markdown_it import MarkdownIt

    model_id = unique()
    with controlplane.client("alice") as alice:
        alice.create_model(model_id, **HOSTILE)
        alice.register_version(
            model_id,
            trained_model.onnx,
            datasets={"train": trained_model.train},
            label="target",
            params={"C": "1|<i>x</i>"},
        )
        alice.set_alias(model_id, "champion", 1)
        md = alice.model_card(model_id, "@champion").content
        assert alice.model_card(model_id, 1).content == md
    rendered = _Rendered()
    rendered.feed(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md))
    # One heading of the card's own, the sections, a paragraph per prose line and the
    # tables: no link, emphasis, strikethrough, code, list, quote, script or heading from a
    # value.
    assert set(rendered.tags) <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td"}
    assert not GFM_AUTOLINK.search(md), GFM_AUTOLINK.search(md)
    assert rendered.tags.count("h1") == 1
    text = "\n".join(rendered.text)
    for value in (*HOSTILE.values(), "1|<i>x</i>"):
        for line in value.split("\n"):
            # Indentation shows as no-break spaces (a tab as four); a blank line stays blank.
            bare = line.lstrip(" \t")
            if not bare:
                continue
            indent = line[: len(line) - len(bare)].replace("\t", "    ")
            assert "\xa0" * len(indent) + bare in text, line
    capsys.readouterr()
    code = main(["--server", controlplane.address, "model-card", model_id, "@champion"])
    assert code == 0 and capsys.readouterr().out.strip() == md.strip()
