"""`python -m mmssl` runs the command line."""

import sys

from mmssl.cli import main

sys.exit(main())
