"""``python -m voiced``: the same as the ``voiced`` command."""

from __future__ import annotations

from voiced.cli import run

run()
