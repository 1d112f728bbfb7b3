"""``python -m modelplane.cli``."""

from modelplane.cli import run

run()
