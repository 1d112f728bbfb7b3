"""``python -m modelplane.demo``."""

import os
import sys

from modelplane.demo._main import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
