"""The report module's description of what policies read names only policy variables."""

from __future__ import annotations

import re

from controlplane.evaluation import _report
from controlplane.policy import POLICY_VARIABLES


def test_the_variables_the_report_docstring_offers_policies_exist() -> None:
    doc = " ".join((_report.__doc__ or "").split())
    offered = doc.split("Policies read", 1)[1].split(":", 1)[1].split(". ", 1)[0]
    names = re.findall(r"``(\w+)", offered)
    assert names and set(names) <= set(POLICY_VARIABLES), names
