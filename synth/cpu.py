"""One floating-point code path on every x86-64 CPU with AVX2, so the geometry's bytes do not depend on the
machine or on what the calling script imported first.

Every numeric library synth uses picks its kernels by the CPU it runs on, and each rounds differently:
- MKL (PyTorch's GEMMs and LAPACK: the flows, the HOSVD, training) branches on the instruction set and the
  vendor; on AMD EPYC its results also depended on the operands' alignment and a row's block position.
- OpenBLAS (NumPy's and SciPy's BLAS and LAPACK: the decoder on the pinned path, cameras, NNLS, least
  squares, TensorLy's SVDs in the build) picks SkylakeX kernels on AVX-512 CPUs and Haswell or Zen kernels
  elsewhere, and its GEMMs round differently with another thread count (measured on a 128 x 1296 x 13614
  SGEMM, 1 vs 2 threads).
- ATen's vectorised element-wise and reduction kernels (exp, tanh, sums) have AVX2 and AVX-512 versions;
  oneDNN (ATen's convolutions) compiles its kernels for the host's widest ISA.
- NumPy dispatches its float functions (sin, cos, exp) to AVX-512 versions where the CPU has them.
- Warp compiles the rasterizer's CPU kernels for the host (`-march=native`; see `synth.quiet_warp`).

All of them read their setting from the environment once, when they load, so the pins are environment
variables (`PINNED_ENV`) set where synth starts a process, before any of them loads: the `synth` command
(`synth.cli.command`), Ray workers (their runtime env), the pinned child that builds models
(`synth.build.build`). `import synth` sets nothing: a caller's process keeps its own code path, and
`pin()` is there for an API user who wants the pinned one in their own process (call it first).

- `MKL_CBWR=COMPATIBLE,STRICT`: MKL's conditional numerical reproducibility on its SSE2 branch, the one
  branch MKL runs on every x86-64 CPU, Intel or not (its AVX2 branch is Intel-only: elsewhere MKL silently
  falls back to AUTO, measured on AMD EPYC). Its results still change with the thread count, so the
  model's GEMMs run one thread each (`synth.facemodel.threads`).
- `OPENBLAS_CORETYPE=SandyBridge`, `OPENBLAS_NUM_THREADS=1`: OpenBLAS's AVX kernels, which every AVX2
  CPU runs, Intel or AMD, on one thread; unlike its Haswell kernels they give a GEMM row the same bytes
  whatever rows share the call (`synth.facemodel.threads`), so the decoder runs on them.
- `ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`: ATen's and oneDNN's AVX2 kernels.
- `NPY_DISABLE_CPU_FEATURES`: NumPy's AVX-512 dispatch targets off.
`code_path()` reads back what is in force; its key names every one of these, and the pipeline records
it in `run.json` and checks it on every worker.
"""

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

# Values as the libraries spell them.
MKL_BRANCH = "COMPATIBLE,STRICT"
ATEN_CAPABILITY = "avx2"
NUMPY_LEVEL = "X86_V3"  # NumPy's dispatch target for AVX2 + FMA; the ones above it are disabled
OPENBLAS_CORE = "SandyBridge"  # AVX kernels: a row's bytes do not depend on its GEMM call (threads)
OPENBLAS_THREADS = 1
ONEDNN_ISA = "AVX2"
PINNED_ENV = {
    "MKL_CBWR": MKL_BRANCH,
    "ATEN_CPU_CAPABILITY": ATEN_CAPABILITY,
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": OPENBLAS_CORE,
    "OPENBLAS_NUM_THREADS": str(OPENBLAS_THREADS),
    "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA,
}
# The instruction sets every pinned kernel above needs: without them the pins are not set (an AVX2
# kernel forced onto an older CPU would stop the process with an illegal instruction).
REQUIRED_FLAGS = frozenset({"avx2", "fma"})

# mkl_service.h: mkl_cbwr_get(MKL_CBWR_BRANCH) return values
_MKL_BRANCHES = {
    0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
    9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1",
}  # fmt: skip
_MKL_CBWR_BRANCH = 1
_MKL_CBWR_ALL = -1
_MKL_CBWR_STRICT = 0x10000


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else ():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@cache
def can_pin() -> bool:
    """Whether this machine runs the pinned code path: x86-64 with AVX2 and FMA (read on Linux)."""
    return platform.machine() in ("x86_64", "AMD64") and cpu_flags() >= REQUIRED_FLAGS


def pinned_env() -> dict[str, str]:
    """The environment variables a process needs for the pinned code path (none where it cannot run)."""
    return dict(PINNED_ENV) if can_pin() else {}


def env_is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """Whether `env` (default: this process's) already holds every pin."""
    env = os.environ if env is None else env
    return all(env.get(key) == value for key, value in pinned_env().items())


def pin() -> None:
    """Set the pinned environment in this process (overriding other values). It takes effect only for
    libraries not loaded yet: call it before importing NumPy, SciPy or torch."""
    os.environ.update(pinned_env())


# Libraries that read the pins when they load: once one is loaded, only a new process can pin it.
_NUMERIC = ("numpy", "scipy", "torch")


def pin_process(argv: list[str]) -> None:
    """For an entry point that owns its process (the `synth` command, the test runner): pin it. Nothing
    numeric is loaded yet when such a process starts, so setting the environment is enough; if something
    was (a sitecustomize, an embedding program), the process re-executes `argv` with the pins."""
    if env_is_pinned():
        return
    if any(name in sys.modules for name in _NUMERIC):
        os.execve(argv[0], argv, {**os.environ, **pinned_env()})
    pin()


def mkl_branch() -> str:
    """The MKL code branch in force in this process ("COMPATIBLE,STRICT" when pinned; "OFF" without CNR),
    "none" without MKL. Starts MKL, so the environment in force now decides its branch from here on."""
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


def numpy_level() -> str:
    """The highest of NumPy's dispatch targets in force in this process (e.g. "X86_V3")."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    enabled = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    return enabled[-1] if enabled else "baseline"


_OWN_BLAS_DIRS = ("numpy.libs", "scipy.libs")  # where NumPy's and SciPy's wheels keep their OpenBLAS


def _openblas_libs() -> list[dict[str, Any]]:
    """threadpoolctl's records of NumPy's and SciPy's OpenBLAS (SciPy's is loaded here if installed).
    Other wheels (OpenCV's, say) load their own copies as they are imported; synth runs no float work on
    them, so they are left out."""
    import numpy  # noqa: F401  (loads its OpenBLAS)

    with contextlib.suppress(ImportError):
        import scipy.linalg  # noqa: F401  (loads its own OpenBLAS)
    from threadpoolctl import threadpool_info

    return [
        lib
        for lib in threadpool_info()
        if lib["internal_api"] == "openblas" and Path(lib["filepath"]).parent.name in _OWN_BLAS_DIRS
    ]


def _blas_label(lib: dict[str, Any], kernels: str | None, threads: int) -> str:
    # lower case: OpenBLAS reads "SandyBridge" from the environment and reports "Sandybridge"
    return f"{lib['prefix']} {lib['version']} {str(kernels).lower()} x{threads}"


def openblas() -> list[str]:
    """NumPy's and SciPy's OpenBLAS as "<prefix> <version> <kernels> x<threads>", e.g.
    "libscipy_openblas 0.3.31.188.0 sandybridge x1"."""
    return sorted(_blas_label(lib, lib.get("architecture"), lib["num_threads"]) for lib in _openblas_libs())


def _key(
    torch_version: str, aten: str, mkl: str, onednn: str, numpy_version: str, level: str, blas: list[str]
) -> str:
    return (
        f"torch {torch_version} / aten {aten} / mkl {mkl} / onednn {onednn} / numpy {numpy_version} "
        f"{level} / openblas {', '.join(blas) or 'none'}"
    )


@cache
def code_path() -> dict[str, Any]:
    """What decides the geometry's bytes in this process, and the CPU it runs on.

    "key": torch and NumPy versions and the code paths in force (ATen capability, MKL branch, oneDNN ISA,
    NumPy dispatch target, each OpenBLAS's kernels and threads): equal keys give equal geometry bytes (the
    promise in docs/architecture.md). "cpu", "isa": the machine, for the record.
    """
    import numpy as np
    import torch

    from synth.hardware import cpu_model

    flags = cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    capability = torch.backends.cpu.get_cpu_capability()
    branch, level, blas = mkl_branch(), numpy_level(), openblas()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "host")  # oneDNN reads it when it first runs
    return {
        "key": _key(torch.__version__, capability, branch, onednn, np.__version__, level, blas),
        "cpu": cpu_model(),
        "isa": isa,
        "aten": capability,
        "mkl": branch,
        "numpy": level,
        "openblas": blas,
        "onednn": onednn,
    }


def pinned() -> bool:
    """Whether this process runs the pinned code path (False on a CPU without AVX2, and in a process whose
    libraries loaded before the pins were set)."""
    path = code_path()
    return (
        can_pin()
        and path["aten"] == ATEN_CAPABILITY.upper()
        and path["mkl"] in (MKL_BRANCH, "none")
        and path["numpy"] == NUMPY_LEVEL
        and all(lib.endswith(f" {OPENBLAS_CORE.lower()} x{OPENBLAS_THREADS}") for lib in path["openblas"])
        and path["onednn"] == ONEDNN_ISA
    )


def pinned_key() -> str:
    """The key of a pinned process of this installation (what `synth` and Ray workers run), whatever this
    process runs: the versions are this installation's, the code paths the pinned ones."""
    import numpy as np
    import torch

    mkl = MKL_BRANCH if torch.backends.mkl.is_available() else "none"
    blas = sorted(_blas_label(lib, OPENBLAS_CORE, OPENBLAS_THREADS) for lib in _openblas_libs())
    aten = ATEN_CAPABILITY.upper()
    return _key(torch.__version__, aten, mkl, ONEDNN_ISA, np.__version__, NUMPY_LEVEL, blas)
