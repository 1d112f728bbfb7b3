"""Rendering model-card data (see :mod:`controlplane.services.model_cards`) as Markdown or
HTML. Both show the same sections in the same order."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any


def _num(value: Any) -> str:
    """A number as a person reads it: six significant digits (an r2 of 0.9999987 is not 1, an
    error of 2e-05 is not 0), and no negative zero."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        shown = f"{value:.6g}"
        return "0" if shown in ("-0", "0") else shown
    return str(value)


def _sections(card: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, paragraphs, table rows with a header row first) for every section."""
    model, version, lineage = card["model"], card["version"], card["lineage"]
    out: list[tuple[str, list[str], list[list[str]]]] = []
    out.append(("Intended use", [model["intended_use"] or "Not stated."], []))
    out.append(("Limitations", [model["limitations"] or "Not stated."], []))
    out.append(
        (
            "Version",
            [version["description"]] if version.get("description") else [],
            [
                ["field", "value"],
                ["state", version["state"]],
                ["labels", _labels(version.get("labels"))],
                ["model labels", _labels(model.get("labels"))],
                ["artifact sha256", version["artifact_sha256"]],
                ["aliases", ", ".join(version["aliases"]) or "none"],
                ["created by", version["created_by"]],
                ["created", version["create_time"]],
                ["features", str(len(version["feature_names"]))],
                ["label column", version["label_column"] or "n/a"],
            ],
        )
    )
    code = lineage.get("code", {})
    env = lineage.get("environment", {})
    packages = len(env.get("packages", []))
    rows = [
        ["field", "value"],
        ["training run", lineage.get("training_run_id") or "n/a"],
        ["code", f"{code.get('repository') or 'n/a'} @ {code.get('commit') or 'n/a'}"],
        ["python", env.get("python_version") or "n/a"],
        ["platform", env.get("platform") or "n/a"],
        ["packages", f"{packages} (listed in the JSON card)" if packages else "none recorded"],
    ]
    rows += [
        [
            f"dataset {d['role']}",
            f"{d['sha256']} ({d['row_count']} rows, {d['format']})"
            + (f" from {d['source']}" if d.get("source") else ""),
        ]
        for d in lineage.get("datasets", [])
    ]
    rows += [[f"parameter {k}", str(v)] for k, v in sorted(lineage.get("parameters", {}).items())]
    # Metrics the trainer recorded at registration (the evaluation's are in their own section).
    rows += [
        [f"training metric {k}", _num(v)] for k, v in sorted(lineage.get("metrics", {}).items())
    ]
    out.append(("Lineage", [], rows))
    ev = card["evaluation"]
    if ev is None:
        out.append(("Evaluation", ["No evaluation yet."], []))
    else:
        intro = [
            f"{ev['name']} on the {ev['dataset_role']} dataset {ev['dataset_sha256']} "
            f"({ev['rows']} rows, label {ev['label']}, {ev['task']})."
        ]
        if ev["compared_version"]:
            intro.append(f"Deltas against {ev['compared_version']}.")
        metric_rows = [["metric", "value", "delta"]] + [
            [k, _num(v), _num(ev["deltas"].get(k)) if ev["deltas"] else "n/a"]
            for k, v in sorted(ev["metrics"].items())
        ]
        out.append(("Evaluation metrics", intro, metric_rows))
        slice_rows = [["slice", "rows", "metrics"]]
        for column, values in sorted(ev["slices"].items()):
            for value, s in values.items():
                shown = ", ".join(f"{k}={_num(v)}" for k, v in sorted(s["metrics"].items()))
                slice_rows.append([f"{column}={value}", str(s["count"]), shown])
        out.append(("Slices", [] if len(slice_rows) > 1 else ["No slices."], _only(slice_rows)))
        fair_rows = [["attribute", "measure", "value"]]
        for attribute, f in sorted(ev["fairness"].items()):
            for group, g in sorted((f.get("groups") or {}).items()):
                shown = ", ".join(f"{k}={_num(v)}" for k, v in g.items())
                fair_rows.append([attribute, f"group {group}", shown])
            for k, v in sorted(f.items()):
                if isinstance(v, int | float) or v is None:
                    fair_rows.append([attribute, k, _num(v)])
        out.append(
            (
                "Fairness",
                [] if len(fair_rows) > 1 else ["No protected attributes."],
                _only(fair_rows),
            )
        )
        val = ev["validation"] or {}
        notes = [f"Failure: {f}" for f in val.get("failures", [])] if val else ["Not validated."]
        out.append(("Data validation", notes, _only(_validation_rows(val))))
        feature_rows = _feature_rows(val)
        out.append(
            (
                "Data validation by feature",
                [] if len(feature_rows) > 1 else ["No features checked."],
                _only(feature_rows),
            )
        )
    gate_rows = [["target", "policy", "passed", "current", "evaluation", "time", "rules"]] + [
        [
            d["target"],
            f"{d['policy'] or 'none'} r{d['policy_revision']}",
            "yes" if d["passed"] else "no",
            _currency(d),
            d["evaluation"] or "none",
            d["time"],
            "; ".join(f"{r['expression']} → {r['outcome']}" for r in d["rules"]) or "no policy",
        ]
        for d in card["gate_decisions"]
    ]
    gate_notes = [] if card["gate_decisions"] else ["None."]
    if any(
        not d["current"] and not d.get("made_by_earlier_release") for d in card["gate_decisions"]
    ):
        gate_notes.append(
            "A decision that is not current rests on evidence (evaluation, policy revision, "
            "approvals or labels) that has changed since, and no longer lets its alias move; "
            "run the gate again."
        )
    if any(d.get("made_by_earlier_release") for d in card["gate_decisions"]):
        gate_notes.append(
            "A decision made by an earlier release rests on an evidence digest this release "
            "does not compare, and no longer lets its alias move; run the gate again (approvals "
            "still count)."
        )
    out.append(("Gate decisions", gate_notes, _only(gate_rows)))
    ap_rows = [["target", "decision", "approver", "roles", "current", "signature", "comment"]] + [
        [
            a["target"],
            a["decision"],
            a["approver"],
            ", ".join(a["roles"]),
            "yes" if a["current"] else "no",
            a["signature"],
            a["comment"],
        ]
        for a in card["approvals"]
    ]
    out.append(("Approvals", [] if card["approvals"] else ["None."], _only(ap_rows)))
    return out


def _currency(decision: dict[str, Any]) -> str:
    """A gate decision's ``current`` cell: yes, or why not."""
    if decision["current"]:
        return "yes"
    if decision.get("made_by_earlier_release"):
        return "no: made by an earlier release, run the gate again"
    return "no: stale, the evidence changed since"


def _only(rows: list[list[str]]) -> list[list[str]]:
    return rows if len(rows) > 1 else []


def _labels(labels: dict[str, str] | None) -> str:
    """Labels as ``key=value`` pairs in key order, ``none`` without any."""
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "none"


def _validation_rows(val: dict[str, Any]) -> list[list[str]]:
    """The data validation's outcome: passed, baseline, the columns missing or extra, the
    features whose kind changed, and the limits it checked against."""
    rows = [["check", "value"]]
    rows += [[k, _num(v)] for k, v in sorted(val.items()) if not isinstance(v, list | dict)]
    for key in ("missing_columns", "extra_columns"):
        if val.get(key):
            rows.append([key, ", ".join(str(c) for c in val[key])])
    for change in val.get("dtype_changes") or []:
        rows.append(
            [
                f"kind of {change.get('feature')}",
                f"{change.get('actual')} (baseline {change.get('expected')})",
            ]
        )
    rows += [[f"limit {k}", _num(v)] for k, v in sorted((val.get("thresholds") or {}).items())]
    return rows


def _feature_rows(val: dict[str, Any]) -> list[list[str]]:
    """One row per checked feature: its missing share (and the baseline's), the share of its
    values outside the baseline's range (numeric) or in categories the baseline never saw
    (categorical), n/a where it does not apply or there is no baseline."""
    rows = [
        [
            "feature",
            "kind",
            "missing share",
            "baseline missing share",
            "out of range share",
            "unseen category share",
            "unseen categories",
        ]
    ]
    for name, f in (val.get("features") or {}).items():
        unseen = ", ".join(str(c) for c in f.get("unseen_categories") or []) or "none"
        rows.append(
            [
                str(name),
                str(f.get("kind", "")),
                _num(f.get("missing_share")),
                _num(f.get("baseline_missing_share")),
                _num(f.get("out_of_range_share")),
                _num(f.get("unseen_category_share")),
                unseen if f.get("unseen_category_share") is not None else "n/a",
            ]
        )
    return rows


#: Inline Markdown: emphasis, code, links and table pipes are backslash-escaped; ``<``, ``>``
#: and ``&`` become entities, so no value can open an HTML tag. An underscore inside a word
#: (``roc_auc``) never starts emphasis and stays as it is. GitHub-flavoured Markdown's own
#: inline syntax is escaped too: ``~`` (strikethrough), and what its autolinks are found by
#: (every ``@``, for e-mail addresses; the ``:`` of ``scheme://``; the ``.`` of ``www.``), so
#: no value is struck through or turned into a link; each still shows as written.
_MD_INLINE = re.compile(r"[\\`*\[\]|~@]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|:(?=//)|(?<=[Ww]{3})\.")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
#: What makes a line (its indentation already replaced) a heading, quote, list item, rule or
#: setext underline.
_MD_BLOCK = re.compile(r"^(?=[#>+=~-])|^(\d+)(?=[.)])")
#: A line's indentation: four spaces or a tab after a blank line would start a code block.
_MD_INDENT = re.compile(r"^[ \t]+")
_NBSP = "&nbsp;"


def _md_inline(text: str) -> str:
    text = re.sub(r"[&<>]", lambda m: _MD_ENTITIES[m.group()], str(text))
    return _MD_INLINE.sub(lambda m: "\\" + m.group(), text)


def _md_line(line: str) -> str:
    if not line.strip(" \t"):
        return ""
    indent = _MD_INDENT.match(line)
    lead = indent.group() if indent else ""
    shown = _md_inline(line[len(lead) :])
    if lead:
        # Kept as no-break spaces, which Markdown reads as text: the indentation shows, and
        # nothing after it is read as a block marker.
        return lead.replace("\t", _NBSP * 4).replace(" ", _NBSP) + shown
    return _MD_BLOCK.sub(lambda m: m.group() + "\\", shown, count=1)


def _md_paragraph(text: str) -> str:
    """``text`` shown as written: each line escaped, none read as a block marker or as
    indented code (leading spaces and tabs become no-break spaces)."""
    return "\n".join(_md_line(line) for line in text.split("\n"))


def _md_cell(text: str) -> str:
    return _md_inline(text).replace("\r", " ").replace("\n", " ")


def _md_table(rows: Sequence[Sequence[str]]) -> list[str]:
    head, *body = rows
    lines = ["| " + " | ".join(_md_cell(c) for c in head) + " |"]
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in body]
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown."""
    model, version = card["model"], card["version"]
    lines = [f"# Model card: {_md_inline(version['name'])}", ""]
    if model["description"]:
        lines += [_md_paragraph(model["description"]), ""]
    for title, paragraphs, rows in _sections(card):
        lines += [f"## {title}", ""]
        for p in paragraphs:
            lines += [_md_paragraph(p), ""]
        if rows:
            lines += [*_md_table(rows), ""]
    return "\n".join(lines)


def render_html(card: dict[str, Any]) -> str:
    """The card as a standalone HTML page (every value escaped)."""
    e = html.escape
    title = f"Model card: {card['version']['name']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if card["model"]["description"]:
        parts.append(f"<p>{e(card['model']['description'])}</p>")
    for heading, paragraphs, rows in _sections(card):
        parts.append(f"<h2>{e(heading)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in paragraphs]
        if rows:
            head, *body = rows
            parts.append("<table><thead><tr>")
            parts += [f"<th>{e(str(c))}</th>" for c in head]
            parts.append("</tr></thead><tbody>")
            for r in body:
                parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)
