"""Reference training losses of the LAPA / ViPRA debug layouts, shared by tests/test_heads.py.

`python tests/heads_golden.py` prints `case -> {metric: value}` for every case (loss, per-head metrics and the global
gradient norm of one `objective.make_loss_fn` call, jitted); GOLDEN in tests/test_heads.py holds what that printed on
the code *before* the per-family branches became the head table (commit 74e64b1, `main` at the time), so the test
proves the table-driven objective computes the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from latent_pretraining import flow, objective
from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, init_params
from latent_pretraining.sequence import LayoutSpec

B, A = 4, 3
WEIGHTS = {"text": 0.25, "vision": 0.5, "latent": 1.0, "action_bins": 0.75, "flow": 2.0}
# (recipe, llama.loss_chunk, llama.tie_embeddings)
CASES = {"lapa": ("lapa", 0, False), "lapa_chunked": ("lapa", 3, True), "vipra": ("vipra", 0, False),
         "vipra_chunked": ("vipra", 5, False), "lapa_bins": ("lapa_bins", 0, True)}


def layout(recipe: str) -> LayoutSpec:
    """Tiny versions of the recipes: LAPA latent pretraining (1 frame, 4 codes), ViPRA (2 frames + future frame,
    2 x (3 codes + separator), co-trained with 3 flow slots), LAPA fine-tuning (6 discrete action-bin tokens)."""
    vipra = recipe == "vipra"
    bins = recipe == "lapa_bins"
    return LayoutSpec(prompt_len=4, num_frames=2 if vipra else 1, tokens_per_frame=4, vision_codebook=16,
                      future_frame=vipra, latent_steps=0 if bins else (2 if vipra else 1),
                      codes_per_step=3 if vipra else 4, latent_codebook=8, latent_separator=vipra,
                      action_slots=3 if vipra else 0, bos_id=1, eos_id=2, pad_id=0, video_open=(5, 6),
                      video_close=(7,), action_open=(8,), action_close=(9,), bidirectional_actions=vipra,
                      action_tokens=6 if bins else 0)


def model_config(spec: LayoutSpec, loss_chunk: int, tie: bool) -> VideoLlamaConfig:
    llama = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                        max_seq_len=64, loss_chunk=loss_chunk, tie_embeddings=tie)
    return VideoLlamaConfig(llama=llama, vision_vocab_size=18,
                            latent_vocab_size=spec.latent_codebook + 1 if spec.latent_steps else 0,
                            action_vocab_size=12 if spec.action_tokens else 0,
                            action_dim=A if spec.action_slots else 0)


def batch(spec: LayoutSpec, seed: int = 0) -> dict[str, jax.Array]:
    """Token-cache style batch (frame / future / latent ids given, so no frozen VQGAN or LAM runs)."""
    rng = np.random.default_rng(seed)
    g, s, c = spec.tokens_per_frame, spec.latent_steps, spec.codes_per_step
    mask = np.ones((B, spec.prompt_len), bool)
    mask[0, :2] = False
    out = {"prompt_ids": np.where(mask, rng.integers(3, 40, mask.shape), 0).astype(np.int32), "prompt_mask": mask,
           "frame_ids": rng.integers(0, spec.vision_codebook, (B, spec.num_frames, g)).astype(np.int32),
           "action_valid": np.asarray([True, True, False, True])}
    if spec.future_frame:
        out["future_ids"] = rng.integers(0, spec.vision_codebook, (B, g)).astype(np.int32)
    if s:
        out["latent_ids"] = rng.integers(0, spec.latent_codebook, (B, s, c)).astype(np.int32)
        out["latent_valid"] = np.asarray([[True] * s, [True] * s, [True] * (s - 1) + [False], [True] * s])
    if spec.action_slots:
        out["actions"] = rng.normal(size=(B, spec.action_slots, A)).astype(np.float32)
        out["action_pad_mask"] = np.asarray([[True] * spec.action_slots] * 3 + [[True] + [False] * 2])
    if spec.action_tokens:
        out["action_bins"] = rng.integers(0, 12, (B, spec.action_tokens)).astype(np.int32)
        out["action_pad_mask"] = np.asarray([[True, True]] * 3 + [[True, False]])
    return {k: jnp.asarray(v) for k, v in out.items()}


def run(model: VideoLlama, spec: LayoutSpec, params, data, weights=WEIGHTS) -> tuple[dict[str, float], object]:
    """(metrics incl. "loss" and "grad_norm", grads) of one jitted value_and_grad of the training objective."""
    frozen = objective.Frozen(vision=None)  # ids come from the batch: the VQGAN config is never read
    loss_fn = objective.make_loss_fn(model, spec, frozen, weights, flow.FlowConfig(), cotrain_fraction=0.5)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, r: loss_fn(p, b, r, {"frozen": {}}), has_aux=True))
    (loss, (metrics, _)), grads = grad_fn(params, data, jax.random.key(7))
    out = {k: float(v) for k, v in metrics.items()}
    out["loss"] = float(loss)
    out["grad_norm"] = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
    return out, grads


def case(name: str) -> tuple[VideoLlama, LayoutSpec, dict, dict[str, jax.Array]]:
    recipe, chunk, tie = CASES[name]
    spec = layout(recipe)
    cfg = model_config(spec, chunk, tie)
    return VideoLlama(cfg), spec, init_params(cfg, jax.random.key(3))["params"], batch(spec)


def compute(name: str) -> dict[str, float]:
    model, spec, params, data = case(name)
    return run(model, spec, params, data)[0]


if __name__ == "__main__":
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for name in CASES:
        print(f"{name!r}: {dict(sorted(compute(name).items()))!r},")
