"""The process-wide numerical setting that makes a row's numbers independent of its batch.

Intel's MKL picks its GEMM kernels by CPU and call shape; on an Intel CPU limited to AVX2, its
kernels give a row of a 32-row call other last bits depending on the row's position (measured on
the digits MLP and CNN: up to 7e-7 on the logits when the rows are permuted).  MKL's conditional
numerical reproducibility in strict mode (``MKL_CBWR=AUTO,STRICT``) removes that: a row's result is
then a function of the row alone, on every Intel code path.  AMD CPUs run MKL's own kernels, which
were position-independent in every measurement; the setting is harmless there.

MKL reads ``MKL_CBWR`` once, when it first runs (not when torch is imported), so
:func:`install` sets it as the environment default when ``benchmark`` is imported: the CLI, the
Python API and every worker process (local processes, Ray, submitit inherit the environment or
import ``benchmark`` before their first model call).  A value the user set explicitly is kept.
:func:`mkl_mode` reads the mode MKL actually runs in, and :func:`check` warns once per process when
it does not guarantee row independence (MKL started before ``benchmark`` was imported, or a
user's setting without ``STRICT``).

Light on purpose: no torch import here (``import benchmark`` stays fast).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings

VARIABLE = "MKL_CBWR"
DEFAULT = "AUTO,STRICT"

# mkl.h: MKL_CBWR_ALL = ~0; branches; the STRICT flag
_ALL = -1
_BRANCHES = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
             8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1",
             14: "AVX512_E1"}
_STRICT = 0x10000

# where the user's own value (if any) is remembered: a child process inherits the variable itself
# and cannot tell ours from theirs, which is the point (it runs in the same mode)
_USER_VALUE: str | None = None


def install(environ=os.environ) -> str:
    """Make strict MKL reproducibility the process's default; returns the value in force.

    Sets ``MKL_CBWR`` when the user has not; if torch is already imported (its MKL may not have
    run yet), the environment still reaches MKL at its first call."""
    global _USER_VALUE
    if VARIABLE in environ and environ[VARIABLE].strip():
        _USER_VALUE = environ[VARIABLE]
        return environ[VARIABLE]
    environ[VARIABLE] = DEFAULT
    return DEFAULT


def _mkl_library():
    """The library holding torch's (statically linked) MKL, or None (no MKL in this build)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(lib_dir, name)
        if os.path.exists(path):
            try:
                lib = ctypes.CDLL(path)
                fn = lib.mkl_serv_cbwr_get
            except (OSError, AttributeError):
                return None
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    return None


def describe(mode: int) -> str:
    """``AUTO,STRICT`` for 0x10002 and so on (MKL_CBWR's own spelling)."""
    branch = _BRANCHES.get(mode & 0xFFFF, f"0x{mode & 0xFFFF:x}")
    return branch + (",STRICT" if mode & _STRICT else "")


def mkl_mode() -> str | None:
    """The conditional-reproducibility mode torch's MKL runs in (``AUTO,STRICT``, ``BRANCH_OFF``
    for MKL's default, ...), read from MKL itself; None when this torch has no MKL or torch is not
    imported.  Reading it makes MKL start, so it fixes the mode for the rest of the process."""
    fn = _mkl_library()
    return None if fn is None else describe(fn(_ALL))


def row_independent(mode: str | None) -> bool:
    """Whether MKL's GEMM gives a row the same bits at any position of a call in this mode: strict
    mode, or the compatible kernels (measured on an Intel Xeon under AVX2 and natively)."""
    return mode is None or mode.endswith(",STRICT") or mode.split(",")[0] == "COMPATIBLE"


@functools.cache
def check() -> str | None:
    """Warn (once per process) when MKL runs in a mode where a row's numbers can depend on its
    position in a batch on Intel CPUs; returns the mode."""
    mode = mkl_mode()
    if not row_independent(mode):
        how = (f"you set {VARIABLE}={_USER_VALUE}" if _USER_VALUE is not None else
               "MKL ran before `benchmark` was imported")
        warnings.warn(f"MKL runs in mode {mode} ({how}): on Intel CPUs an example's logits can then depend on "
                      f"its position in a batch, so results may not reproduce bit for bit elsewhere; set "
                      f"{VARIABLE}={DEFAULT} before starting Python, or import benchmark before running any "
                      f"torch model", RuntimeWarning, stacklevel=3)
    return mode
