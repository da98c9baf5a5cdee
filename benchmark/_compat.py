"""Compatibility shims for our dependencies' packaging defects (see DESIGN.md)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _AutoattackAlias(importlib.abc.MetaPathFinder):
    """Resolve ``autoattack`` and ``autoattack.*`` to ``pyautoattack`` lazily, on first import.

    Lazy so that ``import benchmark`` (and ``shiftbench ls``) does not pay for importing torch.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "autoattack" and not fullname.startswith("autoattack."):
            return None
        real = "py" + fullname
        if importlib.util.find_spec(real.split(".")[0]) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real: str):
        self.real = real

    def create_module(self, spec):
        module = importlib.import_module(self.real)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):  # the real module is already executed
        # the import system stamped the alias spec onto the real module: restore its own, so
        # that importlib.util.find_spec("pyautoattack") keeps its search path
        module.__spec__ = self._real_spec


def install_autoattack_alias() -> None:
    if not any(isinstance(f, _AutoattackAlias) for f in sys.meta_path):
        sys.meta_path.append(_AutoattackAlias())
