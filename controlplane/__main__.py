"""``python -m controlplane`` runs ``modelplane controlplane ...``."""

import sys

from modelplane.cli import main

sys.exit(main(["controlplane", *sys.argv[1:]]))
