"""A process's own peak memory, for benchmarks that run each measurement in a subprocess."""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM from /proc, else ru_maxrss.

    ru_maxrss is not enough on Linux: exec keeps the high-water mark of the image it
    replaced, so a child started by a 1 GB parent reports at least 1 GB. VmHWM belongs to
    the process's current address space, which exec makes afresh.
    """
    try:
        status = STATUS.read_text(encoding="ascii")
    except OSError:
        # ru_maxrss is in kilobytes on Linux (bytes on macOS; these benchmarks target Linux).
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    raise RuntimeError(f"{STATUS} has no VmHWM line")
