"""Where a figure was measured: CPU model, its vector instruction sets, core count, load average and the code's
revision, as one JSON-able dict.

Timed figures on shared 2-core machines mean little without the load they were taken under, so the test session
(`tests/conftest.py`) and `make demo` (`scripts/demo.py`) record `snapshot()` at their start and end, and
`scripts/readme_results.py` prints it next to the figures it puts in the README. The instruction sets are there
because XLA compiles for the CPU it runs on: the same seeded run gives other floating-point results under AVX2 than
under AVX (docs/comparison_log.md, "`compare.py`'s default grid is the measured one (stop 62)"), so a figure that
does not reproduce to the digit on another machine needs them to be explained.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# the x86 / Arm vector extensions that change which kernels XLA and numpy run, as /proc/cpuinfo names them
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_bf16", "neon", "asimd", "sve", "sve2")


def cpu_isa(path: str = "/proc/cpuinfo") -> list[str]:
    """The vector instruction sets (ISA_FLAGS, in that order) the first CPU in `path` reports ([] where there is no
    such file, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ISA_FLAGS if x in have]
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages ([] where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def git_revision(repo: str) -> str:
    """The short commit hash of the checkout at `repo`, with '+dirty' for uncommitted changes; '' outside git."""
    try:
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("+dirty" if dirty else "")


def snapshot() -> dict:
    """{'time': unix seconds, 'cpu': model, 'isa': vector extensions, 'cores': count, 'load': [1, 5, 15 min]} of this
    machine now."""
    return {"time": round(time.time(), 1), "cpu": cpu_model(), "isa": cpu_isa(), "cores": os.cpu_count() or 0,
            "load": load_average()}
