"""Shared test set-up: tests/ on sys.path, so test files import the reference loops kept here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
