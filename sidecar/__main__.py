"""``python -m sidecar``: the same as ``modelplane sidecar serve``."""

from __future__ import annotations

import sys

from modelplane.cli import main

if __name__ == "__main__":
    sys.exit(main(["sidecar", "serve", *sys.argv[1:]]))
