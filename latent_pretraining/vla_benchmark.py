"""``vla`` benchmark: the VideoLLaMA train step (layout assembly + model + per-head losses + flow matching + AdamW)
on pre-tokenized ids, i.e. the token-cache path; the frozen tokenizers are benchmarked with their own models.

Reports, from one run on one machine:
- tokens/s and model FLOP/s over the machine's matmul peak measured in the same run ("MFU"; model FLOPs = 6 x
  backbone matmul params x tokens + causal-attention FLOPs, heads excluded, so the ratio is comparable across
  head configurations);
- the step time with every head evaluated at every position divided by ours (heads only at target positions).

    python scripts/benchmark.py vla --size demo --recipe vipra            # the demo preset's geometry
    python scripts/benchmark.py vla --size 200m --recipe vipra --batch 2 --steps 3
    python scripts/benchmark.py vla --size 1b --dtype bfloat16 --batch 8  # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_pretraining import flow, objective
from latent_pretraining.benchmark import _timeit, interleaved, matmul_peak, parse_lean, print_comparison, temp_bytes
from latent_pretraining.model.llama_config import preset
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, init_params
from latent_pretraining.sequence import LayoutSpec

# (hidden, ffn, layers, heads) of the demo presets (configs/vla_common.demo_model); text vocab of the demo tokenizer
DEMO = {"hidden_size": 192, "intermediate_size": 512, "num_layers": 3, "num_heads": 4, "vocab_size": 512}


def layout(recipe: str, vision_codebook: int, tokens_per_frame: int, prompt_len: int,
           bidirectional_actions: bool = False) -> LayoutSpec:
    """The demo geometry of a recipe (lapa: 1 frame, 4 codes; vipra: 2 frames + future, 6 x (16 + sep), 6 slots)."""
    vipra = recipe == "vipra"
    return LayoutSpec(prompt_len=prompt_len, num_frames=2 if vipra else 1, tokens_per_frame=tokens_per_frame,
                      vision_codebook=vision_codebook, future_frame=vipra, latent_steps=6 if vipra else 1,
                      codes_per_step=16 if vipra else 4, latent_codebook=8, latent_separator=vipra,
                      action_slots=6 if vipra else 0, bos_id=1, eos_id=2, pad_id=0, video_open=(5, 6, 7),
                      video_close=(8, 9), action_open=(5, 10, 11), action_close=(12,),
                      bidirectional_actions=bidirectional_actions and vipra)


def fake_batch(spec: LayoutSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g, s, c = spec.tokens_per_frame, spec.latent_steps, spec.codes_per_step
    out = {"prompt_ids": rng.integers(3, 400, (batch, spec.prompt_len)).astype(np.int32),
           "prompt_mask": np.ones((batch, spec.prompt_len), bool),
           "frame_ids": rng.integers(0, spec.vision_codebook, (batch, spec.num_frames, g)).astype(np.int32),
           "action_valid": np.arange(batch) % 2 == 0}
    if spec.future_frame:
        out["future_ids"] = rng.integers(0, spec.vision_codebook, (batch, g)).astype(np.int32)
    if s:
        out["latent_ids"] = rng.integers(0, spec.latent_codebook, (batch, s, c)).astype(np.int32)
        out["latent_valid"] = np.ones((batch, s), bool)
    if spec.action_slots:
        out["actions"] = rng.normal(size=(batch, spec.action_slots, 7)).astype(np.float32)
        out["action_pad_mask"] = np.ones((batch, spec.action_slots), bool)
    return out


class _AllHeads(VideoLlama):
    """The same model with every head evaluated at every position (then gathered): the reference for the ratio."""

    def __call__(self, ids, family, *, head_positions=None, **kw):
        out = super().__call__(ids, family, head_positions=None, **kw)
        logits = {k: v[:, np.asarray(head_positions[k])] for k, v in out.logits.items() if k in head_positions}
        return out.replace(logits=logits)


def make_step(model: VideoLlama, spec: LayoutSpec, lr: float = 1e-4) -> Any:
    frozen = objective.Frozen(vision=None)  # unused: the batch carries ids
    loss_fn = objective.make_loss_fn(model, spec, frozen, {"text": 0.02, "vision": 0.48, "latent": 0.48, "flow": 1.0},
                                     flow.FlowConfig(), cotrain_fraction=0.5)
    tx = optax.adamw(lr)

    def step(params, opt, batch, rng):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, {"frozen": {}})
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    return jax.jit(step, donate_argnums=(0, 1)), tx


def model_flops(cfg: VideoLlamaConfig, seq: int, tokens: int) -> float:
    ll = cfg.llama
    d, hd = ll.hidden_size, ll.dim_per_head
    per_layer = d * hd * (2 * ll.num_heads + 2 * ll.kv_heads) + 3 * d * ll.intermediate_size
    attn = 2 * ll.num_layers * ll.num_heads * hd * seq  # causal: half of the full 4·L·H·hd·S
    return 3.0 * (2 * ll.num_layers * per_layer + attn) * tokens


def prepare_step(cfg: VideoLlamaConfig, spec: LayoutSpec, batch: int, all_heads: bool = False) -> tuple[Any, Any]:
    """``(run one step, compiled step)`` on a fake batch (params and optimizer state donated each call)."""
    model = (_AllHeads if all_heads else VideoLlama)(cfg)
    step, tx = make_step(model, spec)
    params = init_params(cfg, jax.random.PRNGKey(0))["params"]
    opt = tx.init(params)
    data = jax.tree.map(jnp.asarray, fake_batch(spec, batch))
    compiled = step.lower(params, opt, data, jax.random.PRNGKey(1)).compile()
    box = [params, opt]

    def once():
        box[0], box[1], loss = compiled(box[0], box[1], data, jax.random.PRNGKey(1))
        loss.block_until_ready()

    return once, compiled


def time_step(cfg: VideoLlamaConfig, spec: LayoutSpec, batch: int, steps: int, all_heads: bool) -> list[float]:
    once, _ = prepare_step(cfg, spec, batch, all_heads)
    wall, _ = _timeit(once, steps, warmup=1)
    return wall


def compare_lean(cfg: VideoLlamaConfig, spec: LayoutSpec, a: argparse.Namespace) -> int:
    """The configured step ('base') against variants with other loss_chunk / attention_kv_block, interleaved."""
    variants = {"base": cfg}
    for text in a.compare_lean:
        loss_chunk, kv_block = parse_lean(text)
        variants[f"{loss_chunk},{kv_block}"] = cfg.replace(
            llama=dataclasses.replace(cfg.llama, loss_chunk=loss_chunk, attention_kv_block=kv_block))
    runs, temps = {}, {}
    for name, c in variants.items():
        runs[name], compiled = prepare_step(c, spec, a.batch)
        temps[name] = temp_bytes(compiled)
    print_comparison(interleaved(runs, a.rounds, a.steps), temps, "base")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py vla", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="demo", help="'demo' or a LLaMA preset (debug, 200m, 1b, 7b)")
    p.add_argument("--recipe", default="vipra", choices=("lapa", "vipra"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tokens-per-frame", type=int, default=64, help="64: the demo VQGAN; 256: LWM's")
    p.add_argument("--vision-codebook", type=int, default=1024, help="1024: the demo VQGAN; 8192: LWM's")
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--no-reference", action="store_true", help="skip the all-heads reference timing")
    p.add_argument("--loss-chunk", type=int, default=0, help="llama.loss_chunk (chunked heads + CE; 0: off)")
    p.add_argument("--attention-kv-block", type=int, default=0, help="llama.attention_kv_block (0: off)")
    p.add_argument("--compare-lean", nargs="*", default=[], metavar="LOSS_CHUNK,KV_BLOCK",
                   help="interleave the configured step ('base') with these variants; print temporaries and ratios")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --compare-lean")
    p.add_argument("--bidirectional-actions", action="store_true",
                   help="vipra: the action slots see each other (block ids: a [B,1,T,S] mask on the dense path)")
    a = p.parse_args(argv)
    lean = {"loss_chunk": a.loss_chunk, "attention_kv_block": a.attention_kv_block}
    if a.size == "demo":
        llama = preset("debug", **DEMO, dtype=a.dtype, **lean)
    else:
        llama = preset(a.size, dtype=a.dtype, **lean)
    spec = layout(a.recipe, a.vision_codebook, a.tokens_per_frame, a.prompt_len, a.bidirectional_actions)
    cfg = VideoLlamaConfig(llama=llama, vision_vocab_size=a.vision_codebook + 2, latent_vocab_size=9,
                           action_vocab_size=0, action_dim=7 if spec.action_slots else 0)
    tokens = a.batch * spec.length
    print(f"VLA step: {a.recipe} layout, L={spec.length}, batch {a.batch}, {a.size} backbone "
          f"({llama.num_params() / 1e6:.1f}M params incl. text embedding/head), {a.dtype}, "
          f"{jax.devices()[0].device_kind} x{jax.device_count()}")
    if a.compare_lean:
        return compare_lean(cfg, spec, a)
    peak, _ = matmul_peak(dtype=a.dtype)
    ours = statistics.median(time_step(cfg, spec, a.batch, a.steps, all_heads=False))
    mfu = model_flops(cfg, spec.length, tokens) / ours / peak
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s | step {ours * 1e3:.1f} ms | {tokens / ours:,.0f} tokens/s | "
          f"model FLOP/s / matmul peak = {mfu:.3f}")
    if not a.no_reference:
        ref = statistics.median(time_step(cfg, spec, a.batch, a.steps, all_heads=True))
        print(f"all heads at all positions: step {ref * 1e3:.1f} ms -> heads at target positions are "
              f"{ref / ours:.2f}x faster")
    return 0
