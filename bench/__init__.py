"""Benchmarks of voiced against the simulator (see bench/README.md)."""

from __future__ import annotations
