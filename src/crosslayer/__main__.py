"""``python -m crosslayer`` (and ``torchrun -m crosslayer``) runs the CLI."""

import sys

from crosslayer.cli import main

sys.exit(main())
