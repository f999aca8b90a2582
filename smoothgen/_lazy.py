"""A module imported on first use, for the command line: `smoothgen --help` must not wait for torch.

`np = lazy_module("numpy")` binds a stand-in whose first attribute access imports NumPy; from then on it
forwards every attribute to the real module. `smoothgen.cli.main` imports the heavy modules itself right
after parsing, while the start-up handling of Ctrl-C is still in place (smoothgen._entry), so in a run
they are never first imported in the middle of a command.
"""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands in for the module `name` until an attribute is needed."""

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(object.__getattribute__(self, "_lazy_name")), attr)

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_lazy_name')!r}>"


def lazy_module(name: str) -> Any:
    return LazyModule(name)
