"""``python -m xviz`` (and ``torchrun ... -m xviz train``) runs the command line."""

import sys

from xviz.cli import main

sys.exit(main())
