"""shiftbench: adversarial robustness under distribution shift.

Importing ``benchmark`` makes ``robustbench`` importable: robustbench 1.1.1 imports a module
named ``autoattack``, while the AutoAttack wheel on PyPI installs ``pyautoattack``.  It also makes
MKL's strict reproducibility mode the process's default (``MKL_CBWR=AUTO,STRICT`` unless the user
set it; :mod:`benchmark._numerics`), so an example's numbers never depend on its place in a batch.
"""
from __future__ import annotations

from ._numerics import install as _install_numerics

_install_numerics()  # first: before anything can start MKL

from ._compat import install_autoattack_alias  # noqa: E402

install_autoattack_alias()

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Evaluate an in-memory model on a suite; see :func:`benchmark.workflows.evaluate.evaluate`."""
    from .workflows.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def _registry(registry):
    from .registry import Registry, layered_location

    if isinstance(registry, Registry):
        return registry
    return Registry(layered_location(registry))


def submit(entry, *, weights=None, suite: str = "digits", registry=None, results="results", **kwargs):
    """Submit a model entry (``shiftbench submit``): returns a
    :class:`benchmark.workflows.submit.SubmitResult` (rank, metrics, per-shift table, Markdown).
    ``registry``: your registry folder, layered over the built-in one (or a ``Registry``)."""
    from .workflows.submit import submit as _submit

    return _submit(entry, registry=_registry(registry), suite=suite, weights=weights, results=results, **kwargs)


def reproduce(suite: str = "digits", *, registry=None, results="results", **kwargs):
    """Re-run stored cells and compare them (``shiftbench reproduce``): returns a
    :class:`benchmark.workflows.reproduce.ReproduceResult` (``.cells`` DataFrame, ``.ok``)."""
    from .workflows.reproduce import reproduce as _reproduce

    return _reproduce(_registry(registry), suite, results, **kwargs)


def export_baseline(model: str, out=None, *, suite: str = "digits", registry=None, results="results", **kwargs):
    """A model's baseline for :func:`regress` (``shiftbench export-baseline``) as a dict; written
    to ``out`` when given."""
    from .workflows.regress import export_baseline as _export, write_baseline

    data = _export(_registry(registry), suite, model, results, **kwargs)
    if out is not None:
        write_baseline(data, out)
    return data


def regress(model_or_entry, baseline, *, registry=None, **kwargs):
    """Compare a model (``nn.Module``, entry file, registry id or ``python:module:factory``) with a
    baseline (``shiftbench regress``): returns a :class:`benchmark.workflows.regress.RegressResult`
    (``.cells`` DataFrame with p-values and verdicts, ``.worse``, ``.markdown()``)."""
    from .workflows.regress import regress as _regress

    return _regress(model_or_entry, baseline, registry=_registry(registry), **kwargs)


__all__ = ["evaluate", "submit", "reproduce", "export_baseline", "regress", "__version__"]
