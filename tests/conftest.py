"""Shared test fixtures; the helpers of every test folder live in ``tests/support/``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# The test folders import the helpers by module name (``from sids_fixtures import ...``).
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import pytest


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """``cli.main`` sets up logging on its first call, bound to that test's captured stderr; drop it after."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for h in list(root.handlers):
        # Only the plain StreamHandler that basicConfig adds; pytest's own capture handlers stay.
        if h not in before and type(h) is logging.StreamHandler:
            root.removeHandler(h)
