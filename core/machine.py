"""Where a figure was measured: CPU model, core count, load average and the code's revision, as one JSON-able dict.

Timed figures on shared 2-core machines mean little without the load they were taken under, so the test session
(`tests/conftest.py`) and `make demo` (`scripts/demo.py`) record `snapshot()` at their start and end, and
`scripts/readme_results.py` prints it next to the figures it puts in the README.
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
    """{'time': unix seconds, 'cpu': model, 'cores': count, 'load': [1, 5, 15 min]} of this machine now."""
    return {"time": round(time.time(), 1), "cpu": cpu_model(), "cores": os.cpu_count() or 0, "load": load_average()}
