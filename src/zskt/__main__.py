"""`python -m zskt` is the `zskt` command."""

import sys

from zskt.cli import main

sys.exit(main())
