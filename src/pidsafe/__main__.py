"""Run the pidsafe command: ``python -m pidsafe``."""

import sys

from .cli import main

sys.exit(main())
