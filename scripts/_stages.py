"""Shared by scripts/demo.py and scripts/compare.py: run a pipeline stage as a subprocess, reuse it when its
outputs exist and were made by the same command, and keep the console compact.

What a stage shows on the console (its full output goes to OUT/logs/<name>.log only):

      > vqgan: python -m latent_pretraining.vqgan_train --config=... (log: runs/demo/logs/vqgan.log)
      vqgan: 100%|#####| 800/800 [02:01<00:00, 6.6 step/s]          (a terminal only; the trainer's "step N" lines)
      vqgan done in 121 s: PSNR 24.10 dB (baseline 20.31 dB), 87% of codes used

and `summary_table()` lists every stage at the end (status, time, headline figure, outputs). Each finished stage
also leaves OUT/logs/<name>.stage.json (wall seconds, CPU seconds, headline, outputs), which a later reuse, the run
report and the comparison's cost table read.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lines worth showing when a stage fails (the tail of its log without the third-party chatter)
NOISE = re.compile(r"^[IWD]\d{4} |^WARNING: All log|^I0000|oneDNN|Instructions for updating|CounterV2|ordered dataset"
                   r"|absl::InitializeLog|^\s*$")
STEP = re.compile(r"(?:^|\] )step (\d+)\b")  # the trainers' plain progress line: "step 100 | loss=... | ..."
FAIL_TAIL = 15


@dataclasses.dataclass
class StageRecord:
    """One row of the final summary table."""

    name: str
    status: str  # "ran" | "reused" | "failed"
    seconds: float
    headline: str
    outputs: str
    # user + system CPU seconds of the stage's process tree (its waited-for children included); None: not measured
    # (records written before it was kept, or a stage run in this process)
    cpu_seconds: float | None = None


Runner = Callable[..., None]  # run_command's signature: (name, cmd, out, done, *, total) -> None
STAGES: list[StageRecord] = []  # every stage of this process, in order (demo.py and compare.py append to it)


def run_stage(name: str, cmd: list[str], out: str, done: str, redo: set[str], *, total: int | None = None,
              valid: Callable[[str], bool] | None = None, runner: Runner | None = None) -> bool:
    """Runs `cmd` unless `done` exists (and passes `valid`, when given) and was made by the same command (returns
    whether it ran).

    Console: a start line with the command and the log path, a progress bar over the trainer's steps (on a
    terminal, when the number of steps is known: `total`, else read from the command's config), and one line of key
    figures read from `done`. A failure prints the tail of the log and exits with one line naming the log.
    `runner` (default `run_command`) does the running; tests pass one that counts its calls."""
    if name not in redo and reusable(name, cmd, out, done, valid):
        logs, outputs = os.path.join(out, "logs"), os.path.dirname(done) or "."
        prev = _read_record(logs, name)
        headline = figures(done) or (prev or {}).get("headline", "")
        cpu = (prev or {}).get("cpu_seconds")  # a reused stage keeps the times it took when it ran
        record(StageRecord(name, "reused", float((prev or {}).get("seconds", 0.0)), headline, outputs,
                           None if cpu is None else float(cpu)), logs)
        print(f"  = {name}: reusing {outputs}" + (f": {headline}" if headline else ""), flush=True)
        return False
    stamp = os.path.join(out, "logs", f"{name}.cmd.json")
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    if os.path.exists(stamp):  # a rerun: the old stamp must not vouch for a half-written output if this one dies
        why = ("asked for" if name in redo
               else command_change(_read_stamp(stamp), cmd) or "its output is missing or incomplete")
        print(f"  ! {name}: running again ({why})", flush=True)
        os.remove(stamp)
    (runner or run_command)(name, cmd, out, done, total=total)
    with open(stamp, "w") as f:  # written only after a success
        json.dump(cmd, f)
    return True


def reusable(name: str, cmd: list[str], out: str, done: str, valid: Callable[[str], bool] | None = None) -> bool:
    """Whether stage `name`'s output `done` exists, passes `valid` and was made by exactly `cmd` (its stamp
    OUT/logs/<name>.cmd.json, written after the command succeeded). A killed run has no stamp or an invalid output."""
    stamp = os.path.join(out, "logs", f"{name}.cmd.json")
    if not (os.path.exists(done) and os.path.exists(stamp)):
        return False
    old = _read_stamp(stamp)
    return old is not None and same_command(old, cmd) and (valid is None or valid(done))


def _read_stamp(stamp: str) -> list | None:
    try:
        with open(stamp) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    return old if isinstance(old, list) else None


def _is_python(arg: object) -> bool:
    return os.path.basename(str(arg)).startswith("python")


def _identity(cmd: list) -> list:
    """What makes two stage commands the same run: every argument, except that a leading Python interpreter counts
    as "python" whatever its path (the same module and arguments from another virtual environment or checkout; a
    path there must not make a finished 10-minute run start again)."""
    return ["python", *cmd[1:]] if cmd and _is_python(cmd[0]) else list(cmd)


def same_command(old: list, new: list) -> bool:
    """Whether a stamped command is the one about to run (see `_identity`)."""
    return _identity(old) == _identity(new)


def command_change(old: list | None, new: list) -> str:
    """Why a stamped stage runs again, in a few words ('' when the commands are the same)."""
    if old is None:
        return "its stamp is unreadable"
    a, b = _identity(old), _identity(new)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"its command changed at argument {i}: {str(x)[:80]!r} -> {str(y)[:80]!r}"
    return "" if len(a) == len(b) else f"its command changed: {len(a)} -> {len(b)} arguments"


def run_command(name: str, cmd: list[str], out: str, done: str, *, total: int | None = None) -> None:
    """Runs one stage's command with its output in OUT/logs/<name>.log (see `run_stage`); raises SystemExit on a
    failure after printing the log's tail."""
    logs = os.path.join(out, "logs")
    outputs = os.path.dirname(done) or "."
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, f"{name}.log")
    print(f"  > {name}: {display_command(cmd)}  (log: {log_path})", flush=True)
    t0, cpu0 = time.time(), _children_cpu()
    total = total if total is not None else total_steps(cmd)
    bar = _bar(name, total)
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             env=quiet.child_env())
        assert p.stdout is not None
        for line in p.stdout:
            log.write(line)
            m = STEP.search(line)
            if bar is not None and m:
                bar.update(max(0, min(int(m.group(1)), bar.total or 1 << 62) - bar.n))
        code = p.wait()
    if bar is not None:
        bar.close()
    seconds, cpu = time.time() - t0, _children_cpu() - cpu0
    if code:
        record(StageRecord(name, "failed", seconds, f"exit {code}", log_path, cpu), logs)  # the report shows it too
        print(f"  ! {name} failed after {seconds:.0f} s; last lines of {log_path}:", flush=True)
        for line in log_tail(log_path):
            print("      " + line, flush=True)
        raise SystemExit(f"stage {name} failed (exit {code}); see {log_path}")
    headline = figures(done)
    record(StageRecord(name, "ran", seconds, headline, outputs, cpu), logs)
    print(f"  {name} done in {seconds:.0f} s" + (f": {headline}" if headline else ""), flush=True)


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished, waited-for children (and theirs): the difference
    around one `Popen.wait` is that stage's CPU time, since stages run one at a time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def record(rec: StageRecord, logs: str | None) -> None:
    """Adds a row to STAGES and (with `logs`) keeps it as logs/<name>.stage.json for later reuse and the report."""
    STAGES.append(rec)
    if logs is not None:
        os.makedirs(logs, exist_ok=True)
        with open(os.path.join(logs, f"{rec.name}.stage.json"), "w") as f:
            json.dump(dataclasses.asdict(rec), f, indent=1)


def _read_record(logs: str, name: str) -> dict | None:
    try:
        return load_json(os.path.join(logs, f"{name}.stage.json"))
    except (OSError, ValueError):
        return None


def display_command(cmd: Sequence[str]) -> str:
    """The command as the user would type it: `python` for the interpreter's full path."""
    if not cmd:
        return ""
    is_python = cmd[0] == sys.executable or os.path.basename(cmd[0]).startswith("python")
    return " ".join(["python" if is_python else cmd[0], *cmd[1:]])


def total_steps(cmd: Sequence[str]) -> int | None:
    """train.total_steps of a trainer command: its --config.train.total_steps override, else the preset's value
    (configs are pure functions of the preset name, so loading one here is cheap); None when unknown."""
    for a in cmd:
        if a.startswith("--config.train.total_steps="):
            try:
                return int(a.split("=", 1)[1])
            except ValueError:
                return None
    arg = next((a.split("=", 1)[1] for a in cmd if a.startswith("--config=")), None)
    if arg is None:
        return None
    path, _, preset = arg.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_stage_config", os.path.join(ROOT, path))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        config = mod.get_config(preset) if preset else mod.get_config()
        return int(config.train.total_steps)
    except Exception:  # only the progress bar's length depends on it: no bar is better than no run
        return None


def _bar(name: str, total: int | None):
    """A tqdm bar on a terminal (stderr), None otherwise: a log file or a pipe gets no carriage-return frames."""
    if not total or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"    {name}", unit="step", dynamic_ncols=True, leave=False)


def log_tail(path: str, n: int = FAIL_TAIL) -> list[str]:
    """The last `n` lines of a log that are not third-party noise (what explains a failure)."""
    with open(path, errors="replace") as f:
        lines = [ln.rstrip()[:200] for ln in f if not NOISE.search(ln)]
    return lines[-n:]


# ------------------------------------------------------------------------------------------------- key figures
def figures(done: str) -> str:
    """One line of the key figures in a stage's result file (by its name); '' when it has none.

    A LAM training's result is its `checkpoints` directory: the figures come from the last record of the
    `codebook_usage.jsonl` beside it (training batches, so the evaluation stage's held-out figures stay the headline
    of `lam_*_eval`)."""
    if os.path.basename(done.rstrip(os.sep)) == "checkpoints":
        return _lam_training_figures(os.path.join(os.path.dirname(done.rstrip(os.sep)), "codebook_usage.jsonl"))
    try:
        d = load_json(done) if done.endswith(".json") else None
    except (OSError, ValueError):
        return ""
    if not isinstance(d, dict):
        return ""
    base = os.path.basename(done)
    if base == "generation.json" and isinstance(d.get("summary"), dict):  # a Meta-World data stage: every dataset
        return _generation_figures(os.path.dirname(os.path.dirname(os.path.dirname(done))))
    if base == "eval.json" and "psnr" in d:  # VQGAN
        line = f"PSNR {d['psnr']:.2f} dB"
        if "baseline_psnr" in d:
            line += f" (same-bit-budget baseline {d['baseline_psnr']:.2f} dB)"
        if "codebook_used_frac" in d:
            line += f", {100 * d['codebook_used_frac']:.0f}% of codes used"
        return line
    if base == "metrics.json" and "codebook/perplexity" in d:  # LAM evaluation
        parts = [f"perplexity {d['codebook/perplexity']:.2f} of {d.get('codebook/size', '?')}"]
        if "probe/direction_acc" in d:
            parts.append(f"direction probe {d['probe/direction_acc']:.3f} (majority "
                         f"{d.get('probe/direction_majority', float('nan')):.3f})")
        if "recon/psnr" in d:
            copy_last = d.get("recon/psnr_copy_last", float("nan"))
            parts.append(f"PSNR {d['recon/psnr']:.2f} dB vs copy-last {copy_last:.2f} dB")
        return ", ".join(parts)
    if base in ("closed_loop.json", "test.json") and "success_rate" in d:  # a policy's closed-loop evaluation
        lo, hi = d.get("ci95", (float("nan"), float("nan")))
        line = (f"success {100 * d['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                f"({d.get('successes', '?')}/{d.get('episodes', '?')})")
        if isinstance(d.get("progress"), float):
            plo, phi = d.get("progress_ci95", (float("nan"), float("nan")))
            line += f", progress {d['progress']:.3f} [{plo:.3f}, {phi:.3f}]"
        return line
    if base == "reference.json" and d.get("curve"):  # a reference policy's training (policy/reference.py)
        return f"final training loss {d['curve'][-1][1]:.4f} over {d['curve'][-1][0]} steps"
    if base == "summary.json" and isinstance(d.get("eval"), dict):  # VideoLLaMA pretraining
        e, t = d["eval"], d.get("train", {})
        parts = []
        if "acc_latent" in e:
            parts.append(f"latent-action acc {e['acc_latent']:.3f} (chance {e.get('latent_chance', float('nan')):.3f}"
                         f", majority {e.get('latent_majority', float('nan')):.3f})")
        if "acc_vision" in e:
            parts.append(f"future-frame token acc {e['acc_vision']:.3f}")
        if "acc_action_bins" in e:  # a LAPA policy: discrete action bins
            parts.append(f"held-out action-bin acc {e['acc_action_bins']:.3f}")
            if isinstance(t.get("loss_action_bins"), dict):
                parts[-1] += (f" (train loss {t['loss_action_bins']['first_10pct']:.3f} -> "
                              f"{t['loss_action_bins']['last_10pct']:.3f})")
        if isinstance(t.get("loss_flow"), dict) and "loss_flow" in e:
            parts.append(f"flow loss {t['loss_flow']['first_10pct']:.3f} -> {t['loss_flow']['last_10pct']:.3f} "
                         f"(held-out {e['loss_flow']:.3f})")
        return ", ".join(parts)
    return ""


def _generation_figures(root: str) -> str:
    """'metaworld_robot 66 ep / 5000 steps (expert 100%), ...' from every generation.json summary under `root`."""
    parts = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for version in sorted(os.listdir(os.path.join(root, name))) if os.path.isdir(os.path.join(root, name)) else []:
            try:
                s = load_json(os.path.join(root, name, version, "generation.json")).get("summary")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(s, dict) and "episodes" in s:
                parts.append(f"{name} {s['episodes']} ep / {s.get('steps', '?')} steps (expert "
                             f"{100 * float(s.get('success_rate', float('nan'))):.0f}%)")
    return ", ".join(parts)


def summary_table(stages: Sequence[StageRecord] | None = None) -> str:
    """The end-of-run table: stage, status, time, headline figure, outputs (plain text, aligned)."""
    rows = [("stage", "status", "time", "headline", "outputs")]
    for s in STAGES if stages is None else stages:
        rows.append((s.name, s.status, duration(s.seconds), s.headline or "-", s.outputs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _lam_training_figures(path: str) -> str:
    """'step N: train PSNR x dB vs copy-last y dB, perplexity p of K' from a LAM run's last codebook-usage record."""
    try:
        with open(path) as f:
            last = next((ln for ln in reversed(f.readlines()) if ln.strip()), "")
        r = json.loads(last) if last else {}
    except (OSError, ValueError):
        return ""
    if not isinstance(r, dict) or "step" not in r:
        return ""
    parts = []
    if "psnr" in r:
        parts.append(f"train PSNR {r['psnr']:.2f} dB" + (f" vs copy-last {r['psnr_copy']:.2f} dB" if "psnr_copy" in r
                                                          else ""))
    if "perplexity" in r:
        counts = r.get("counts_since_reset")
        size = len(counts[0]) if isinstance(counts, list) and counts and isinstance(counts[0], list) else "?"
        parts.append(f"perplexity {r['perplexity']:.2f} of {size}")
    return f"step {r['step']}: " + ", ".join(parts) if parts else ""
