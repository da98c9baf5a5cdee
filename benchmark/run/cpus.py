"""CPU code paths one machine can imitate, so that a test or a benchmark run here sees the numbers
another CPU would compute.

torch, MKL and oneDNN each pick kernels by what the CPU offers, and read an environment variable
that caps the choice (it must be set before torch is imported, so a profile applies to a new
process).  What each changes on an AVX-512 machine, measured on the digits zoo
(``perf/cross_cpu.py --what``):

- ``ATEN_CPU_CAPABILITY``: torch's own vectorised kernels (element-wise ops, reductions such as
  ``sum`` and ``norm``): the attacks' arithmetic;
- ``ONEDNN_MAX_CPU_ISA``: oneDNN's convolutions and pooling: every conv net's logits and gradients;
- ``MKL_ENABLE_INSTRUCTIONS``: MKL's GEMM (linear layers) on Intel CPUs (measured on an Intel
  Xeon with AVX-512 and AMX: ``AVX2`` and ``SSE4_2`` each change every model's logits); on AMD
  CPUs MKL runs its own kernels whatever this says, so it changes nothing there;
- ``MKL_CBWR=COMPATIBLE``: MKL's most portable GEMM kernels, on any CPU: the one way to give the
  linear layers other last bits on an AMD machine (what an Intel machine's MKL does to them).

``native`` is the machine as it is; ``avx2`` caps every library at AVX2 (on an Intel CPU, what an
AVX2-only Intel CPU computes; on an AMD CPU, MKL's part cannot be imitated); ``default`` takes the
most basic path of each (torch without vector extensions, MKL's compatible kernels, oneDNN at
SSE4.1).  ``native`` and ``avx2`` leave ``MKL_CBWR`` unset, so the process runs MKL in the strict
mode that ``import benchmark`` sets (:mod:`benchmark._numerics`), as a user's run does;
``default`` sets its own (``COMPATIBLE``, also row-independent).
"""
from __future__ import annotations

import os
from typing import Mapping

PROFILES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def profile_env(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that imitates CPU code path ``name`` (see :data:`PROFILES`):
    ``base`` (default: this process's) with the three variables set, or removed for ``native``."""
    if name not in PROFILES:
        raise KeyError(f"unknown CPU profile '{name}' (known: {', '.join(PROFILES)})")
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in VARIABLES}
    env.update(PROFILES[name])
    return env
