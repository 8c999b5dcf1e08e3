"""What every benchmark prints next to its figures: the CPU it ran on."""

import platform


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
