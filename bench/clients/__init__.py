"""The push-to-talk clients the benchmark runs, one subprocess each."""

from __future__ import annotations
