"""Which optional packages are installed, asked without importing them (cheap at start-up)."""

from __future__ import annotations

import importlib.util
import sys


def has_adapterhub() -> bool:
    """Whether AdapterHub's ``adapters`` package can be imported."""
    if "adapters" in sys.modules:  # imported (or blocked with None); its lazy module has no spec
        return sys.modules["adapters"] is not None
    return importlib.util.find_spec("adapters") is not None
