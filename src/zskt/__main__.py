"""`python -m zskt` is the `zskt` command."""

from zskt.cli import entry

entry()
