"""``matmuls`` benchmark: the LLaMA step's own matrix products, XLA against torch, interleaved in one process.

The ``train-step`` benchmark compares whole steps; when HF ``transformers`` is faster, this one says how much of
the gap the matrix-multiply kernels alone explain. For every dot of one layer plus the LM head (forward ``x @ W``,
input gradient ``dy @ W^T``, weight gradient ``x^T @ dy``) it times a jitted ``jnp`` product and the same
``torch`` product on the same shapes, alternating the two every round, and prints GFLOP per CPU-second and per
wall-second for each side. The summary weighs each shape by how often the step runs it (once per layer, three times
per step for forward + backward) and prints the step's matmul time at each side's rates:

    RESULT kernels: torch matmuls take 0.89 of XLA's time on this step's shapes (CPU-s); 0.86 (wall)

(the 2-core Xeon of docs/training.md), so a whole-step "HF CPU ÷ ours" well below that ratio points at what is
not a dot (copies, elementwise work).

    python scripts/benchmark.py matmuls                       # the train-step default: D 512, FFN 1408, vocab 32000
    python scripts/benchmark.py matmuls --hidden 256 --ffn 704 --vocab 1024 --tokens 256 --seconds 0.05   # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from latent_pretraining.benchmark import interleaved


@dataclasses.dataclass(frozen=True)
class Product:
    """One matrix product of the step: [m, k] x [k, n] in `mode` ('nn': A @ B, 'nt': A @ B^T, 'tn': A^T @ B), run
    `count` times per step (forward and backward counted separately)."""

    name: str
    m: int
    k: int
    n: int
    mode: str
    count: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def step_products(hidden: int, ffn: int, vocab: int, tokens: int, layers: int, kv_hidden: int = 0) -> list[Product]:
    """The dots of one LLaMA train step with `tokens` = batch × sequence (attention's score/value products left out:
    they are batched per head and small at these lengths). kv_hidden: the K and V projections' width (GQA), default
    `hidden`."""
    kv = kv_hidden or hidden
    out: list[Product] = []
    for name, k, n, per_layer in (("q/o proj", hidden, hidden, 2), ("k/v proj", hidden, kv, 2),
                                  ("gate/up proj", hidden, ffn, 2), ("down proj", ffn, hidden, 1),
                                  ("lm head", hidden, vocab, 0)):
        count = per_layer * layers if per_layer else 1
        out += [Product(f"{name} fwd x@W", tokens, k, n, "nn", count),
                Product(f"{name} bwd dy@W^T", tokens, n, k, "nt", count),
                Product(f"{name} bwd x^T@dy", k, tokens, n, "tn", count)]
    return out


def _operands(p: Product, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((p.k, p.m) if p.mode == "tn" else (p.m, p.k), dtype=np.float32)
    b = rng.standard_normal((p.n, p.k) if p.mode == "nt" else (p.k, p.n), dtype=np.float32)
    return a, b


def _product(mode: str) -> Callable:
    return {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b}[mode]


def time_products(products: list[Product], rounds: int,
                  min_seconds: float) -> dict[str, dict[str, tuple[float, float]]]:
    """{product name: {'xla' | 'torch': (best GFLOP per CPU-second, best GFLOP per wall-second)}}, the two sides
    alternating every round (`benchmark.interleaved`); each timing repeats the product until it has run about
    `min_seconds` of wall time (CPU time is the process's, all threads)."""
    import torch

    rng = np.random.default_rng(0)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for p in products:
        a, b = _operands(p, rng)
        fn = _product(p.mode)
        jf = jax.jit(fn)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        jf(ja, jb).block_until_ready()  # compile, then size the repeats on one warm call
        w = time.perf_counter()
        jf(ja, jb).block_until_ready()
        repeats = max(1, round(min_seconds / max(time.perf_counter() - w, 1e-6)))

        def xla(jf=jf, ja=ja, jb=jb, repeats=repeats) -> None:
            for _ in range(repeats):
                jf(ja, jb).block_until_ready()

        def torch_side(fn=fn, ta=ta, tb=tb, repeats=repeats) -> None:
            for _ in range(repeats):
                fn(ta, tb)

        g = p.flops * repeats / 1e9
        timed = interleaved({"xla": xla, "torch": torch_side}, rounds, steps=1)
        results[p.name] = {side: (g / max(min(cpu), 1e-9), g / max(min(wall), 1e-9))
                           for side, (wall, cpu) in timed.items()}
    return results


def summarize(products: list[Product], results: dict[str, dict[str, tuple[float, float]]]) -> tuple[float, float]:
    """The step's matmul seconds at torch's rates ÷ at XLA's, per CPU-second and per wall-second."""
    ratios = []
    for i in (0, 1):
        secs = {side: sum(p.count * p.flops / 1e9 / results[p.name][side][i] for p in products)
                for side in ("xla", "torch")}
        ratios.append(secs["torch"] / secs["xla"])
    return ratios[0], ratios[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py matmuls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2048, help="batch × sequence (train-step's default 4 × 512)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of them is kept)")
    p.add_argument("--seconds", type=float, default=0.3, help="wall seconds per timing (the product is repeated)")
    a = p.parse_args(argv)
    if min(a.hidden, a.ffn, a.vocab, a.layers, a.tokens, a.rounds) < 1 or a.seconds <= 0:
        p.error("every size and --rounds must be >= 1, --seconds > 0")
    import torch

    products = step_products(a.hidden, a.ffn, a.vocab, a.tokens, a.layers)
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = time_products(products, a.rounds, a.seconds)
    print(f"{'product':28s} {'m x k x n':>18s} {'per step':>8s}  GFLOP/CPU-s xla  torch  torch÷xla   "
          "GFLOP/wall-s xla  torch")
    for prod in products:
        (xc, xw), (tc, tw) = results[prod.name]["xla"], results[prod.name]["torch"]
        print(f"{prod.name:28s} {f'{prod.m}x{prod.k}x{prod.n}':>18s} {prod.count:8d}  {xc:15.1f} {tc:6.1f} "
              f"{tc / xc:10.2f}   {xw:16.1f} {tw:6.1f}")
    cpu_ratio, wall_ratio = summarize(products, results)
    print(f"RESULT kernels: torch matmuls take {cpu_ratio:.2f} of XLA's time on this step's shapes (CPU-s); "
          f"{wall_ratio:.2f} (wall)")
    return 0
