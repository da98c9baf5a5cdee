"""shiftbench: adversarial robustness under distribution shift.

Importing ``benchmark`` makes ``robustbench`` importable: robustbench 1.1.1 imports a module
named ``autoattack``, while the AutoAttack wheel on PyPI installs ``pyautoattack``.
"""
from __future__ import annotations

from ._compat import install_autoattack_alias

install_autoattack_alias()

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Evaluate an in-memory model on a suite; see :func:`benchmark.workflows.evaluate.evaluate`."""
    from .workflows.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["evaluate", "__version__"]
