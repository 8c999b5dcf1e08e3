"""Import NVIDIA Warp with its start-up banner and per-module load lines silenced.

Anny calls `warp.init()` at import time and the render kernels load Warp modules in every Ray worker;
without this, each process prints several lines to stdout. Import this module before `anny` or `warp`.
"""

import warp

warp.config.log_level = warp.LOG_WARNING
