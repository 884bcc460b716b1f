"""Package discovery, which ``pyproject.toml`` alone cannot say: every ``voiced`` package is
found (a hand-kept list once left ``voiced.devices`` out of the wheel), and the ``plugins/``
folder installs as ``voiced_plugins`` (see ``[tool.setuptools.package-dir]``)."""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["voiced", "voiced.*"]), "voiced_plugins"])
