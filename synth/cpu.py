"""One floating-point code path on every x86-64 CPU, so the geometry's bytes do not depend on the machine.

PyTorch picks its kernels by the CPU it runs on, and each rounds differently:
- MKL's GEMMs branch on the instruction set and the vendor; on AMD EPYC they also depend on the operands'
  memory alignment and on a row's position in its block (measured: a flow's output changed with the
  buffer's offset, and with the rows it was batched with).
- ATen's vectorised element-wise and reduction kernels (exp, tanh, sums) have AVX2 and AVX-512 versions.
- NumPy dispatches its float functions (sin, cos, exp for the cameras and lights) to AVX-512 versions
  where the CPU has them.
- Warp compiles the rasterizer's CPU kernels for the host (`-march=native`).
`pin()` fixes all four before any of them runs (`import synth` calls it):
- `MKL_CBWR=COMPATIBLE,STRICT`: MKL's conditional numerical reproducibility on its SSE2 branch, the one
  branch MKL runs on every x86-64 CPU, Intel or not (its AVX2 branch is Intel-only: elsewhere MKL silently
  falls back to the AUTO branch, measured on AMD EPYC). With it the results no longer depend on alignment
  or batch position either. They still change with the thread count (the decoder's GEMM with 1 vs 2
  threads, measured, STRICT or not), so the model's GEMMs run one thread each (`synth.facemodel.threads`).
- `ATEN_CPU_CAPABILITY=avx2`: ATen's AVX2 kernels on AVX2 and AVX-512 machines alike.
- `NPY_DISABLE_CPU_FEATURES`: NumPy's AVX-512 dispatch targets off (NumPy reads it when imported).
- Warp's CPU kernels for its generic x86-64 target instead of the host (see `synth.quiet_warp`).
The pins are environment variables read when MKL / ATen start, so they must be set before the first
tensor operation of the process; `code_path()` reads back what is in force, and the pipeline compares it
between the driver, every worker and earlier runs of a dataset (`run.json`).
"""

import ctypes
import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

# Values as the libraries spell them.
MKL_BRANCH = "COMPATIBLE,STRICT"
ATEN_CAPABILITY = "avx2"
NUMPY_LEVEL = "X86_V3"  # NumPy's dispatch target for AVX2 + FMA; the ones above it are disabled
PINNED_ENV = {
    "MKL_CBWR": MKL_BRANCH,
    "ATEN_CPU_CAPABILITY": ATEN_CAPABILITY,
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}

# mkl_service.h: mkl_cbwr_get(MKL_CBWR_BRANCH) return values
_MKL_BRANCHES = {
    0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
    9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1",
}  # fmt: skip
_MKL_CBWR_BRANCH = 1
_MKL_CBWR_ALL = -1
_MKL_CBWR_STRICT = 0x10000


def pin() -> None:
    """Set the pinned environment (overriding other values): call before the process's first tensor op."""
    if platform.machine() in ("x86_64", "AMD64"):
        os.environ.update(PINNED_ENV)


def mkl_branch() -> str:
    """The MKL code branch in force in this process ("COMPATIBLE,STRICT" when pinned; "OFF" without CNR),
    "none" without MKL. Starts MKL, so the pins apply from here on."""
    import torch

    if not torch.backends.mkl.is_available():
        return "none"
    torch.ones(2) @ torch.ones(2)  # MKL reads MKL_CBWR on its first call
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    try:
        get = lib.mkl_serv_cbwr_get  # MKL's mkl_cbwr_get, exported by PyTorch's static MKL
    except AttributeError:
        return "unknown"
    branch = _MKL_BRANCHES.get(get(_MKL_CBWR_BRANCH), "unknown")
    return f"{branch},STRICT" if get(_MKL_CBWR_ALL) & _MKL_CBWR_STRICT else branch


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else ():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def numpy_level() -> str:
    """The highest of NumPy's dispatch targets in force in this process (e.g. "X86_V3")."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    enabled = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    return enabled[-1] if enabled else "baseline"


@cache
def code_path() -> dict[str, Any]:
    """What decides the geometry's bytes in this process, and the CPU it runs on.

    "key": torch and NumPy versions, ATen capability, MKL branch, NumPy dispatch target: equal keys give
    equal geometry bytes (the promise in docs/architecture.md). "cpu", "isa": the machine, for the record.
    """
    import numpy as np
    import torch

    from synth.hardware import cpu_model

    flags = cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    capability = torch.backends.cpu.get_cpu_capability()
    branch = mkl_branch()
    level = numpy_level()
    return {
        "key": f"torch {torch.__version__} / aten {capability} / mkl {branch} / numpy {np.__version__} "
        f"{level}",
        "cpu": cpu_model(),
        "isa": isa,
        "aten": capability,
        "mkl": branch,
        "numpy": level,
    }


def pinned() -> bool:
    """Whether this process runs the pinned code path (False on a CPU without AVX2, or when something ran
    a tensor operation before `pin()`)."""
    path = code_path()
    return (
        path["aten"] == ATEN_CAPABILITY.upper()
        and path["mkl"] in (MKL_BRANCH, "none")
        and path["numpy"] == NUMPY_LEVEL
    )
