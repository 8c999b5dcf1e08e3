"""Import NVIDIA Warp configured for synth: start-up banner and per-module load lines silenced, CPU
kernels compiled for one instruction set on every x86-64 machine.

Anny calls `warp.init()` at import time and the render kernels load Warp modules in every Ray worker;
without this, each process prints several lines to stdout. Import this module before `anny` or `warp`.
Warp compiles CPU kernels for the host by default (`-march=native`: AVX-512 code on one machine, AVX2 on
another); synth compiles them for Warp's generic x86-64 target so renders do not depend on the CPU (see
`synth.cpu`).
"""

import platform

import warp

warp.config.log_level = warp.LOG_WARNING
if platform.machine() in ("x86_64", "AMD64"):
    # Warp's default flags without the host target (Warp's own clang takes no other -march; a string
    # without it compiles for the generic target). The flags are part of Warp's kernel cache key.
    warp.config.cpu_compiler_flags = " ".join(
        flag for flag in (warp.config.cpu_compiler_flags or "").split() if flag != "-march=native"
    )
