"""Shared test fixtures."""

from __future__ import annotations

import logging

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
