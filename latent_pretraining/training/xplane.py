"""Where a traced step's device time goes: a summary of one ``jax.profiler`` trace (``*.xplane.pb``).

``python scripts/benchmark.py train-step ... --profile DIR`` traces two steps; ``python scripts/benchmark.py xplane
DIR`` then prints, for the accelerator's plane (``/device:GPU:0``, ``/device:TPU:0``; the host CPU plane when there
is none):

- the busy time summed over the plane's op events (kernels on GPU streams; XLA ops on the CPU's threads), and
- that time by category (``CATEGORIES``: GEMM, attention kernels, Triton fusions, XNNPACK fusions on a CPU, copies,
  reductions, other fusions) and by the top ops, each with its share, count and the HLO op it ran for.

Only events that carry an ``hlo_op`` stat (work XLA launched) count; on a GPU a cuBLAS / cuDNN kernel is attributed
to the custom-call that launched it. Parsing uses the XSpace protobuf shipped with TensorFlow (a dependency of the
data pipeline); nothing is uploaded or rendered.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re

# (category, regular expression on "kernel name | hlo op"), first match wins
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention (cuDNN / flash)", r"flash|fmha|cudnn|sdpa|splash"),
    ("GEMM (cuBLAS / CUTLASS / dot)", r"gemm|cutlass|xmma|cublas|\bdot|convolution"),
    ("Triton fusion", r"triton"),
    ("XNNPACK fusion (CPU; may hold dots)", r"ynn_fusion|xnn"),
    ("copy / transpose", r"copy|memcpy|memset|transpose"),
    ("reduction fusion", r"reduce|reduction"),
    ("other fusions (elementwise)", r"fusion"),
)


@dataclasses.dataclass
class OpTime:
    name: str  # kernel (GPU) or op (CPU) name
    hlo_op: str
    ps: int = 0
    count: int = 0


def find_xplane(path: str) -> str:
    """The newest ``*.xplane.pb`` under ``path`` (or ``path`` itself); one clear error when there is none."""
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"no *.xplane.pb under {path!r}; expected the DIR given to train-step --profile")
    return found[-1]


def _stat_value(plane, stat) -> str:
    kind = stat.WhichOneof("value")
    if kind == "ref_value":
        return plane.stat_metadata[stat.ref_value].name
    return str(getattr(stat, kind)) if kind else ""


def device_plane(space):
    """The first accelerator plane with events, else the host CPU plane."""
    planes = [p for p in space.planes if any(line.events for line in p.lines)]
    for prefix in ("/device:GPU", "/device:TPU", "/host:CPU"):
        for p in planes:
            if p.name.startswith(prefix):
                return p
    raise ValueError(f"no plane with events in the trace (planes: {[p.name for p in space.planes]})")


def op_times(plane) -> list[OpTime]:
    """Summed duration and count per (event name, hlo_op) over every line of ``plane``; events without an
    ``hlo_op`` stat (Python frames, thread-pool bookkeeping, runtime calls) are skipped."""
    hlo_key = next((k for k, m in plane.stat_metadata.items() if m.name == "hlo_op"), None)
    ops: dict[tuple[str, str], OpTime] = {}
    for line in plane.lines:
        for ev in line.events:
            meta = plane.event_metadata[ev.metadata_id]
            hlo = next((_stat_value(plane, s) for s in ev.stats if s.metadata_id == hlo_key), None)
            if hlo is None:
                hlo = next((_stat_value(plane, s) for s in meta.stats if s.metadata_id == hlo_key), None)
            if hlo is None:
                continue
            key = (meta.display_name or meta.name, hlo)
            op = ops.setdefault(key, OpTime(*key))
            op.ps += ev.duration_ps
            op.count += 1
    return sorted(ops.values(), key=lambda o: -o.ps)


def category(op: OpTime) -> str:
    text = f"{op.name} | {op.hlo_op}".lower()
    return next((name for name, pattern in CATEGORIES if re.search(pattern, text)), "other")


def summarize(path: str, top: int = 20) -> str:
    """The report ``main`` prints (see the module docstring)."""
    file = find_xplane(path)
    from core import quiet

    quiet.apply_env()  # TensorFlow's C++ start-up lines off (before its import)
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # lazy: only this command needs TensorFlow

    space = xplane_pb2.XSpace()
    with open(file, "rb") as f:
        space.ParseFromString(f.read())
    plane = device_plane(space)
    ops = op_times(plane)
    total = sum(o.ps for o in ops)
    if not total:
        raise ValueError(f"{file}: plane {plane.name!r} has no events with an hlo_op stat")
    by_cat: dict[str, int] = collections.Counter()
    for o in ops:
        by_cat[category(o)] += o.ps
    lines = [f"{file}", f"plane {plane.name}: {total / 1e9:.2f} ms of op time in {sum(o.count for o in ops)} events "
             "(summed over streams / threads; the traced steps together)", "", "| category | ms | share |",
             "|---|---:|---:|"]
    lines += [f"| {c} | {ps / 1e9:.2f} | {ps / total:.1%} |" for c, ps in by_cat.most_common()]
    lines += ["", f"| top {top} ops | hlo op | calls | ms | share | category |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {o.name[:70]} | {o.hlo_op[:40]} | {o.count} | {o.ps / 1e9:.2f} | {o.ps / total:.1%} | "
              f"{category(o)} |" for o in ops[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py xplane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="the DIR given to train-step --profile, or one *.xplane.pb")
    p.add_argument("--top", type=int, default=20, help="how many ops to list")
    args = p.parse_args(argv)
    print(summarize(args.path, args.top))
    return 0
