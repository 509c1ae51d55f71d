"""Modules loaded on first use. The Dagster code location is imported by every run's process and every
step's, and the command line by every command; most of them never reach torch, MLflow, optuna or
matplotlib, which take seconds to import. The wiring (assets/, resources/, sensors/) names the domain
modules that pull those in through `module`, so a step imports them when it uses them."""

from __future__ import annotations

import importlib
from typing import Any


class module:  # noqa: N801  (used like the module it stands for)
    """Stands for the module `name`, imported when one of its attributes is first read. Not placed in
    `sys.modules` (unlike `importlib.util.LazyLoader`'s modules, which anything that walks `sys.modules`,
    `inspect.getmodule` for one, would load at an arbitrary moment)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"
