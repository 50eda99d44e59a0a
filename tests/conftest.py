"""Shared by every test directory. Kept small: each directory's own conftest holds its fixtures."""

from __future__ import annotations

import sys

# Fail fast and clearly if the suite runs on an interpreter the package does not support.
assert sys.version_info >= (3, 11), "plugin_pool's tests need Python 3.11 or newer"
