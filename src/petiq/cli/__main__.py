"""``python -m petiq.cli`` = ``petiq``."""

import sys

from . import main

sys.exit(main())
