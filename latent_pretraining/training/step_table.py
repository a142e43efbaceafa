"""Interleaved step timing for ``scripts/benchmark.py train-step``: wall and CPU time, peak RSS, fraction of peak.

Every variant (ours, HF, lean variants, a square matmul) runs ``steps`` steps per round, the variants alternating for
``rounds`` rounds after one warm-up call each, so load from other processes on a shared machine hits all of them
alike. Per variant:

- wall and process CPU seconds per step (``time.process_time``: every thread of this process, so XLA's and torch's
  worker threads count, other processes do not): min and median over all timed steps;
- peak RSS: the process's resident high-water mark while that variant ran (Linux: ``/proc/self/clear_refs`` resets
  it before each block, ``VmHWM`` reads it after), max over rounds. It is process-wide, so it includes what the other
  variants keep resident (their parameters and optimizer state); "+RSS" is the part above the RSS before the block;
- fraction of peak (CPU): model FLOPs per CPU-second (min CPU time) over the matmul's best FLOPs per CPU-second in the
  same run. CPU-time based, so it holds under load on a shared CPU (a wall-clock ratio would count time spent waiting
  for a core). On an accelerator the host's CPU time says nothing about the chip: the column shows "—" there;
- fraction of peak (wall): model FLOPs per second (min wall time) over the matmul's best FLOPs per second;
- on an accelerator, ``summary`` also gives the MFU: model FLOPs per second over the chip's datasheet dense peak for
  the step's dtype (``DATASHEET_TFLOPS``, or ``--peak-tflops``), the convention of the PaLM paper and MaxText;
- ratios to the reference ("ours ÷ hf"): min-over-min, wall and CPU (< 1 means ours is faster).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Dense matrix-unit peaks in TFLOP/s per chip from the vendors' datasheets (no sparsity), by a substring of
# ``jax.Device.device_kind``, for bfloat16 / float16. First match wins, so the longer names come first.
DATASHEET_TFLOPS: dict[str, float] = {
    "H200": 989.4,  # SXM; the same tensor cores as the H100 SXM
    "H100": 989.4,  # SXM (the PCIe card is lower: pass --peak-tflops)
    "A100": 312.0,
    "TPU v6": 918.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v4": 275.0,
}


def error_line(e: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 200 characters of it)."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def datasheet_flops(device_kind: str, dtype: str) -> float:
    """The chip's dense peak in FLOP/s for a half-precision ``dtype`` (0.0 when unknown or not half precision)."""
    if dtype not in ("bfloat16", "float16"):
        return 0.0
    for name, tflops in DATASHEET_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return 0.0


@dataclasses.dataclass
class Variant:
    """One timed thing: ``run()`` does one full step and waits for it; ``flops`` are model FLOPs per step."""

    name: str
    run: Callable[[], None]
    flops: float
    temp_bytes: int | None = None  # XLA temporaries of the compiled step (None: not XLA or not reported)
    note: str = ""
    is_peak: bool = False  # the matmul that defines the peak


@dataclasses.dataclass
class Result:
    variant: Variant
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    peak_rss: int = 0  # bytes, max over rounds
    rss_growth: int = 0  # bytes above the RSS at the start of the block, max over rounds


def loadavg() -> str:
    """The 1/5/15-minute load averages ('n/a' off Linux)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    """Resets the process's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_now() -> int:
    try:
        return _status_kib("VmRSS") * 1024
    except OSError:
        return 0


def rss_peak() -> int:
    """Peak RSS in bytes since the last reset (or since the start: ``ru_maxrss`` where /proc is missing)."""
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_variant(n: int, dtype: str = "float32") -> Variant:
    """A jitted ``n x n`` matmul (f32 accumulation): the same-run peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return Variant(f"matmul {n}^3", lambda: f(a, b).block_until_ready(), 2.0 * n**3, is_peak=True)


def measure(variants: list[Variant], rounds: int, steps: int) -> list[Result]:
    """Interleaved rounds (see module docstring); the matmul runs 3x ``steps`` per round (it is short)."""
    kept = []
    for v in variants:
        try:
            v.run()  # warm-up: compile / first-touch outside the timing
        except Exception as e:  # e.g. out of memory in a reference implementation: report it, time the others
            print(f"{v.name}: dropped, its first step failed: {error_line(e)}")
            continue
        kept.append(v)
    results = [Result(v) for v in kept]
    for _ in range(rounds):
        for r in results:
            base = rss_now()
            _reset_hwm()
            for _ in range(steps * (3 if r.variant.is_peak else 1)):
                c, t = time.process_time(), time.perf_counter()
                r.variant.run()
                r.wall.append(time.perf_counter() - t)
                r.cpu.append(time.process_time() - c)
            peak = rss_peak()
            r.peak_rss, r.rss_growth = max(r.peak_rss, peak), max(r.rss_growth, peak - base)
    return results


def peak_per_cpu_s(results: list[Result]) -> float:
    """Best FLOPs per CPU-second of the matmul (0 when none was timed)."""
    return max((r.variant.flops / max(min(r.cpu), 1e-9) for r in results if r.variant.is_peak), default=0.0)


def peak_per_wall_s(results: list[Result]) -> float:
    """Best FLOPs per wall-second of the matmul (0 when none was timed)."""
    return max((r.variant.flops / max(min(r.wall), 1e-9) for r in results if r.variant.is_peak), default=0.0)


def format_table(results: list[Result], base: str = "ours", ref: str = "hf") -> str:
    """A Markdown table, one row per variant (see module docstring for the columns)."""
    # on an accelerator the host's CPU seconds say nothing about the chip: no CPU-based fraction there
    peak = peak_per_cpu_s(results) if jax.default_backend() == "cpu" else 0.0
    peak_wall = peak_per_wall_s(results)
    by = {r.variant.name: r for r in results}
    rr = by.get(ref)
    head = ("| variant | wall s/step min (median) | CPU s/step min (median) | fraction of peak (CPU) | "
            f"fraction of peak (wall) | peak RSS GiB (+ during) | XLA temporaries MiB | wall ÷ {ref} | CPU ÷ {ref} |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        v = r.variant
        frac = f"{v.flops / min(r.cpu) / peak:.3f}" if peak and v.flops and not v.is_peak else "—"
        frac_wall = f"{v.flops / min(r.wall) / peak_wall:.3f}" if peak_wall and v.flops and not v.is_peak else "—"
        tmp = f"{v.temp_bytes / 2**20:.0f}" if v.temp_bytes is not None else "—"
        if rr is not None and r is not rr and not v.is_peak:
            wr, cr = f"{min(r.wall) / min(rr.wall):.2f}", f"{min(r.cpu) / min(rr.cpu):.2f}"
        else:
            wr = cr = "—"
        lines.append(f"| {v.name} | {min(r.wall):.3f} ({statistics.median(r.wall):.3f}) | {min(r.cpu):.3f} "
                     f"({statistics.median(r.cpu):.3f}) | {frac} | {frac_wall} | {r.peak_rss / 2**30:.2f} "
                     f"(+{r.rss_growth / 2**30:.2f}) | {tmp} | {wr} | {cr} |")
    cpu_peak = f"{peak / 1e9:.1f} GFLOP per CPU-second, " if peak else ""
    lines.append(f"matmul peak: {cpu_peak}{peak_wall / 1e12:.2f} TFLOP/s wall; "
                 f"{len(results[0].wall)} timed steps per variant; ratios are min over min")
    return "\n".join(lines)


def summary(results: list[Result], base: str = "ours", ref: str = "hf", chip_peak: float = 0.0,
            chip: str = "") -> list[str]:
    """``RESULT`` lines for ``base``: fraction of the same-run matmul peak (per CPU-second on a CPU; per wall-second
    on an accelerator, plus the MFU against ``chip_peak`` FLOP/s, the ``chip``'s datasheet figure, when given) and
    the ratios to ``ref`` when it ran."""
    by = {r.variant.name: r for r in results}
    on_cpu = jax.default_backend() == "cpu"
    b, peak = by.get(base), (peak_per_cpu_s if on_cpu else peak_per_wall_s)(results)
    if b is None or not peak:
        return []
    if on_cpu:
        out = [f"RESULT model_flops_per_s / matmul_peak = {b.variant.flops / min(b.cpu) / peak:.3f}  (per CPU-second, "
               "same-run matmul)"]
    else:
        achieved = b.variant.flops / min(b.wall)
        out = [f"RESULT model_flops_per_s / matmul_peak = {achieved / peak:.3f}  (wall, same-run "
               f"matmul); model TFLOP/s = {achieved / 1e12:.1f}"]
        if chip_peak:
            out.append(f"RESULT MFU = {achieved / chip_peak:.3f}  (model FLOPs per wall-second over {chip}'s datasheet "
                       f"{chip_peak / 1e12:.1f} TFLOP/s)")
    if ref in by:
        r = by[ref]
        out.append(f"RESULT {base} / {ref}: wall {min(b.wall) / min(r.wall):.2f}, CPU {min(b.cpu) / min(r.cpu):.2f}"
                   f"  ({ref} is {min(r.cpu) / min(b.cpu):.2f}x ours in CPU time)")
    return out
