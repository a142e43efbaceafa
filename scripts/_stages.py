"""Shared by scripts/demo.py and scripts/compare.py: run a pipeline stage as a subprocess, reuse it when its
outputs exist and were made by the same command, echo its meaningful output and keep the full log."""

import json
import os
import re
import subprocess
import time

NOISE = re.compile(r"^[IWD]\d{4} |^WARNING: All log|^I0000|oneDNN|Instructions for updating|CounterV2|ordered dataset")


def run_stage(name: str, cmd: list[str], out: str, done: str, redo: set[str]) -> bool:
    """Runs `cmd` unless `done` exists and was made by the same command (returns whether it ran); echoes the
    non-noise lines of its output."""
    stamp = os.path.join(out, "logs", f"{name}.cmd.json")
    if name not in redo and os.path.exists(done) and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == cmd:
                print(f"  reusing {name} ({done})", flush=True)
                return False
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    print(f"  $ {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(out, "logs", f"{name}.log"), "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in p.stdout:
            log.write(line)
            if not NOISE.search(line) and line.strip():
                print("    " + line.rstrip()[:160], flush=True)
        if p.wait():
            raise SystemExit(f"stage {name} failed (exit {p.returncode}); see {log.name}")
    with open(stamp, "w") as f:
        json.dump(cmd, f)
    print(f"  {name} done in {time.time() - t0:.0f} s", flush=True)
    return True


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
