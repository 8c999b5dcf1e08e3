"""Import NVIDIA Warp configured for synth: start-up banner and per-module load lines silenced, CPU
kernels compiled for one instruction set on every x86-64 machine.

Anny calls `warp.init()` at import time and the render kernels load Warp modules in every Ray worker;
without this, each process prints several lines to stdout. Import this module before `anny` or `warp`.
Warp compiles CPU kernels for the host by default (`-march=native`: AVX-512 code on one machine, AVX2 on
another); synth compiles them for `synth.cpu.WARP_TARGET` (AVX2 + FMA) so renders do not depend on the
CPU (see `synth.cpu`).
"""

import platform

import warp

from synth.cpu import WARP_TARGET

warp.config.log_level = warp.LOG_WARNING
if platform.machine() in ("x86_64", "AMD64"):
    # Warp's default flags with the host target replaced (the flags are part of Warp's kernel cache key).
    warp.config.cpu_compiler_flags = (warp.config.cpu_compiler_flags or "-march=native").replace(
        "-march=native", f"-march={WARP_TARGET}"
    )
