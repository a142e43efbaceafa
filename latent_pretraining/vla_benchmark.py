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


LAM_SUFFIX = {"demo": "_demo", "debug": "_tiny", "7b": ""}  # recipe preset -> its LAM preset (as the compile check)
DEMO_VQGAN = dict(hidden_channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=32,
                  num_embeddings=1024, embed_dim=32, num_groups=8)  # configs/vqgan.py:demo
TINY_VQGAN = dict(hidden_channels=8, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1, z_channels=8, num_embeddings=32,
                  embed_dim=8, num_groups=4)


def _random_like(tree: Any, seed: int = 0, scale: float = 0.02) -> Any:
    """Concrete random arrays for abstract leaves: normal(0, scale) floats, zero integers."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(s.dtype)
                        if np.issubdtype(s.dtype, np.floating) else np.zeros(s.shape, s.dtype), tree)


def _random_batch(abstract: dict[str, jax.ShapeDtypeStruct], vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in abstract.items():
        if s.dtype == jnp.uint8:
            out[k] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif s.dtype == jnp.bool_:
            out[k] = np.ones(s.shape, bool)
        elif k == "prompt_ids":
            out[k] = rng.integers(3, vocab, s.shape).astype(np.int32)
        else:
            out[k] = rng.normal(size=s.shape).astype(s.dtype)
    return out


def prepare_trainer_step(config: Any, lam_config: Any | None, tiny_vqgan: bool) -> tuple[Any, Any, float, int]:
    """``(run one step, compiled step, model FLOPs per step, sequence length)`` of the VideoLLaMA trainer's step:
    the recipe's objective with the frozen VQGAN + LAM inside (random weights; raw uint8 frames in the batch), its
    optimizer, `step.make_train_step` and `step.jit_train_step` as `loop.run` builds them, on a one-device mesh."""
    from lam import api as lam_api
    from latent_pretraining import compile_check, train
    from latent_pretraining.model import vqgan
    from latent_pretraining.training import mesh as mesh_lib
    from latent_pretraining.training import optim
    from latent_pretraining.training import sharding as sharding_lib
    from latent_pretraining.training import state as state_lib
    from latent_pretraining.training import step as step_lib

    latent = None
    if lam_config is not None:
        fn, variables, info = lam_api.abstract_latent_labeler(lam_config)
        latent = (fn, _random_latent(variables), info)
    res = config.data.resolution
    vq_cfg = vqgan.VQGANConfig(resolution=res, **(TINY_VQGAN if tiny_vqgan else DEMO_VQGAN))
    tok = compile_check.MarkerTokenizer(512)
    setup = train.build(config, latent, tokenizer=tok, vision=(vq_cfg, vqgan.init_params(vq_cfg)))
    tc = config.train
    mesh = mesh_lib.make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, devices=jax.devices()[:1])
    init_fn = train.make_init_fn(setup)
    loss_fn = objective.make_loss_fn(setup.model, setup.spec, setup.frozen, dict(config.loss), setup.flow,
                                     config.cotrain_fraction)
    with jax.set_mesh(mesh):
        rng = jax.random.PRNGKey(tc.seed)
        abstract = sharding_lib.unbox(jax.eval_shape(init_fn, rng)["params"])
        tx, schedule = optim.make_optimizer(tc.optimizer, tc.total_steps, abstract)
        state, shardings, _ = state_lib.create_train_state(init_fn, tx, mesh, rng,
                                                           loaded_model_state={"frozen": setup.frozen_weights})
        trainable = optim.trainable_mask(abstract, tc.optimizer) if tc.optimizer.frozen else None
        fn = step_lib.jit_train_step(
            step_lib.make_train_step(loss_fn, tx, schedule=schedule, trainable=trainable,
                                     grad_accum_steps=tc.optimizer.grad_accum_steps,
                                     ema_decay=tc.optimizer.ema_decay, skip_nonfinite=tc.skip_nonfinite),
            shardings, mesh_lib.batch_sharding(mesh, 1))
        shapes = compile_check.abstract_batch(setup, mesh)
        data = jax.device_put(_random_batch(shapes, tok.vocab_size), {k: s.sharding for k, s in shapes.items()})
        compiled = fn.lower(state, data).compile()
    box = [state]

    def run() -> None:
        box[0], metrics = compiled(box[0], data)
        jax.block_until_ready((box[0].params, metrics))

    length = setup.spec.length
    flops = setup.model_config.llama.flops_per_token(length) * config.data.batch_size * length
    return run, compiled, flops, length


def _random_latent(variables: Any) -> Any:
    return _random_like(variables, seed=1, scale=0.2)


def step_variants(a: argparse.Namespace, get_config: Any) -> tuple[list, str]:
    """`train-step --model vla`: the trainer's step for `--recipe` at `--size` (demo / debug / 7b), and one variant
    per `--lean LOSS_CHUNK,KV_BLOCK`. No HF reference exists for this model."""
    from latent_pretraining.benchmark import temp_bytes
    from latent_pretraining.training import step_table

    configs = {"ours": (0, 0, False)}
    for text in a.lean:
        lc, kv = parse_lean(text)
        configs[f"ours lc={lc} kv={kv}"] = (lc, kv, True)
    out, head = [], ""
    for name, (lc, kv, lean) in configs.items():
        config = get_config(a.recipe, a.size)
        config.data.batch_size = a.batch
        if lean:
            config.model.llama.loss_chunk, config.model.llama.attention_kv_block = lc, kv
        lam_config = get_config("lam", a.recipe + LAM_SUFFIX.get(a.size, "")) if config.layout.latent_steps else None
        run, compiled, flops, length = prepare_trainer_step(config, lam_config, tiny_vqgan=a.size != "demo")
        out.append(step_table.Variant(name, run, flops, temp_bytes=temp_bytes(compiled)))
        head = head or (f"VideoLLaMA step: {a.recipe}:{a.size}, L={length}, batch {a.batch}, frozen VQGAN + LAM "
                        f"inside, model TFLOP/step={flops / 1e12:.4f} (backbone); no HF reference")
    return out, head
