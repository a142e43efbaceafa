"""VideoLLaMA latent pretraining and co-training (LAPA and ViPRA recipes) on RLDS data.

    python -m latent_pretraining.train --config=configs/vipra.py:demo --workdir=runs/vla_demo/vipra --overwrite
    python -m latent_pretraining.train --config=configs/lapa.py:demo --workdir=runs/vla_demo/lapa --overwrite

The frozen LAM comes from `config.latent.lam_workdir` / `config.latent.step` through `lam.api.latent_labeler`
(`load_latent`; callers of `build` / `train` may pass their own, e.g. tests and the compile check). The run writes
checkpoints (assets: config.json, tokenizer.model, layout.json, vqgan/lam metadata), TensorBoard events,
`curves.json` / `curves.png` (per-head losses over steps) and `summary.json` (held-out evaluation: latent-action
accuracy next to chance and the majority-code rate, vision accuracy, flow loss).

Token caches (optional): `--config.cache.image=runs/tokens/{split}.npz` (scripts/cache_image_tokens.py, one file per
split) and/or `--config.cache.latent=runs/lam_labels` (scripts/label_latent_actions.py) make the host join cached ids
onto each batch (latent_pretraining/token_cache.py); the step then skips the VQGAN / LAM for those parts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from core.errors import InvalidInput
from core.lookup import lookup
from lam import api as lam_api
from latent_pretraining import flow, objective
from latent_pretraining.model import vqgan
from latent_pretraining.model.llama_config import preset as llama_preset
from latent_pretraining.model.text_tokenizer import TextTokenizer, format_prompt, train_demo_tokenizer
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, from_lineage
from latent_pretraining.model.video_llama import init_params as vla_init_params
from latent_pretraining.sequence import LayoutSpec
from latent_pretraining.training.metrics import StepHistory

PyTree = Any
LatentLabeler = lam_api.LatentLabeler  # (latent_fn, variables, info), see lam/api.py
BATCH_KEYS = ("history", "future", "clip", "clip_valid", "actions", "action_pad_mask", "action_valid",
              "frame_ids", "future_ids", "latent_ids", "latent_valid")  # the *_ids: token caches (config.cache)


@dataclasses.dataclass
class Setup:
    """Everything built from a config before training: model, layout, frozen tokenizers, text tokenizer, window."""

    config: ml_collections.ConfigDict
    model_config: VideoLlamaConfig
    spec: LayoutSpec
    frozen: objective.Frozen
    frozen_weights: dict[str, PyTree]
    tokenizer: TextTokenizer
    window: Any
    flow: flow.FlowConfig
    assets: dict[str, Any]
    batch_transform: Callable[[dict], dict] | None = None  # extra host step (e.g. policy/ action bins)

    @property
    def model(self) -> VideoLlama:
        return VideoLlama(self.model_config)


def load_text_tokenizer(config: ml_collections.ConfigDict) -> TextTokenizer:
    path = config.text.tokenizer
    if not path:
        raise InvalidInput("config.text.tokenizer is empty: give a SentencePiece tokenizer.model (LLaMA's for LWM)")
    if not os.path.exists(path):
        if not config.text.train_demo_if_missing:
            raise FileNotFoundError(f"text tokenizer {path!r} does not exist")
        corpus = config.text.corpus
        logging.info("training the %s SentencePiece tokenizer -> %s", corpus, path)
        train_demo_tokenizer(path, vocab_size=config.text.demo_vocab_size, corpus=corpus)
    return TextTokenizer.from_file(path)


def _llama_config(config: ml_collections.ConfigDict, vocab: int) -> Any:
    over = {k: v for k, v in config.model.llama.to_dict().items() if v is not None}  # None = keep the preset
    return llama_preset(config.model.size, vocab_size=vocab, **over)


def build(config: ml_collections.ConfigDict, latent: LatentLabeler | None, *, tokenizer: Any = None,
          vision: tuple[vqgan.VQGANConfig, PyTree] | None = None) -> Setup:
    """Resolves tokenizers and derived sizes (vocabularies, tokens per frame, codes per step) into a Setup.

    `tokenizer` / `vision` (VQGAN config, params) replace the files named by the config (e.g. abstract stand-ins for
    the ahead-of-time compile check, latent_pretraining/compile_check.py)."""
    from data.oxe import PROPRIO_DIM
    from data.windows import WindowSpec

    tok = tokenizer if tokenizer is not None else load_text_tokenizer(config)
    if vision is None and not config.vision.tokenizer:
        raise InvalidInput("config.vision.tokenizer is empty: give a VQGAN .safetensors (python -m "
                           "latent_pretraining.vqgan_train ... or scripts/convert_vqgan.py)")
    vq_cfg, vq_params = vision if vision is not None else vqgan.load_tokenizer(config.vision.tokenizer)
    gh, gw = vq_cfg.token_grid(config.data.resolution)
    lay = config.layout
    if lay.latent_steps and latent is None:
        raise InvalidInput("this recipe predicts latent actions: set config.latent.lam_workdir to a trained LAM run")
    if latent is not None:  # the step carries (shards, gathers) only what labelling reads: not the LAM decoder
        latent = lam_api.encoder_only(latent, frame_size=config.data.resolution)
    lam_info = latent[2] if latent is not None else {"codebook_size": 0, "codes_per_step": 0, "clip_len": 2,
                                                     "offset": 1}
    enc = lambda s: tuple(tok.encode(s)) if s else ()
    proprio_dim = int(config.model.get("proprio_dim", 0))  # effector state as input (one slot after the frames)
    if not 0 <= proprio_dim <= PROPRIO_DIM:
        raise InvalidInput(f"model.proprio_dim {proprio_dim} must be in [0, {PROPRIO_DIM}] (the batch's padded "
                           "proprio)")
    spec = LayoutSpec(
        prompt_len=lay.prompt_len, num_frames=len(config.data.history_offsets), tokens_per_frame=gh * gw,
        vision_codebook=vq_cfg.num_embeddings, future_frame=lay.future_frame, latent_steps=lay.latent_steps,
        codes_per_step=lam_info["codes_per_step"], latent_codebook=lam_info["codebook_size"],
        latent_separator=lay.latent_separator, action_slots=lay.action_slots, bos_id=tok.bos_id,
        eos_id=tok.eos_id, pad_id=tok.pad_id, video_open=enc(lay.video_open), video_close=enc(lay.video_close),
        action_open=enc(lay.action_open), action_close=enc(lay.action_close),
        bidirectional_actions=lay.bidirectional_actions, action_tokens=lay.get("action_tokens", 0),
        proprio_slots=int(proprio_dim > 0))
    if lay.action_slots and lay.action_slots != config.data.horizon:
        raise InvalidInput(f"layout.action_slots {lay.action_slots} must equal data.horizon {config.data.horizon}")
    m = config.model
    mcfg = VideoLlamaConfig(
        llama=_llama_config(config, tok.vocab_size),
        vision_vocab_size=m.vision_vocab_size or vq_cfg.num_embeddings + 2,
        latent_vocab_size=(m.latent_vocab_size or lam_info["codebook_size"] + int(lay.latent_separator))
        if lay.latent_steps else 0,
        action_vocab_size=m.action_vocab_size, action_dim=m.action_dim if lay.action_slots or m.action_dim else 0,
        proprio_dim=proprio_dim)
    if mcfg.vision_vocab_size < vq_cfg.num_embeddings + 2:
        raise InvalidInput(f"model.vision_vocab_size {mcfg.vision_vocab_size} < VQGAN codebook + 2 specials")
    if spec.length > mcfg.llama.max_seq_len:
        raise InvalidInput(f"sequence length {spec.length} exceeds model.llama.max_seq_len {mcfg.llama.max_seq_len}")
    stride = config.data.clip_stride or lam_info["offset"]
    clip_len = lay.latent_steps + 1 if lay.latent_steps else 2
    window = WindowSpec(kind="vla", history_offsets=tuple(config.data.history_offsets), horizon=config.data.horizon,
                        clip_len=clip_len, clip_stride=stride, vla_clip=bool(lay.latent_steps),
                        reference_fps=config.data.reference_fps or None)
    frozen = objective.Frozen(vision=vq_cfg, latent_fn=latent[0] if latent else None,
                              latent_clip_len=lam_info["clip_len"])
    weights = {"vqgan": vq_params, **({"lam": latent[1]} if latent else {})}
    fcfg = flow.FlowConfig(**config.flow.to_dict())
    assets = {"tokenizer.model": tok.model_bytes, "video_llama.json": mcfg.to_dict(),
              "layout.json": dataclasses.asdict(spec),
              "frozen.json": {"vqgan": {"path": os.path.abspath(config.vision.tokenizer) if config.vision.tokenizer
                                         else "", **vq_cfg.to_dict()},
                              "lam": {k: v for k, v in lam_info.items()}}}
    return Setup(config, mcfg, spec, frozen, weights, tok, window, fcfg, assets)


def augment_config(config: ml_collections.ConfigDict) -> Any:
    """config.data.augment -> data.augment.AugmentConfig, or None when disabled. Refuses augmentation with an image
    token cache (the cached ids are of un-augmented frames, so the setting would silently do nothing)."""
    a = config.data.augment
    if not a.enabled:
        return None
    if config.cache.image:
        raise InvalidInput("data.augment.enabled needs frames tokenized in the step, but cache.image is set "
                           f"({config.cache.image!r}); set --config.cache.image='' or disable the augmentation")
    from data.augment import AugmentConfig

    return AugmentConfig(crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio), brightness=a.brightness,
                         contrast=a.contrast, saturation=a.saturation, hue=a.hue)


def make_data(setup: Setup, split: str, seed: int, *, train: bool = False) -> Iterator:
    """The batch iterator of `split`, normalized with data.train_split's statistics (those the model trains on and
    norm_stats.json records); train=True applies config.data.augment (evaluation batches never are)."""
    from data.loader import make_iterator
    from data.mixture import PipelineConfig, mixture_from_lists

    d = setup.config.data
    # entries are `name[:version][@root]` (data/mixture.py ENTRY_SYNTAX): datasets from several roots mix
    mixture = mixture_from_lists(setup.config.recipe or "vla", d.datasets, d.weights)
    cfg = PipelineConfig(data_root=d.root, window=setup.window, global_batch_size=d.batch_size,
                         resolution=d.resolution, split=split, stats_split=d.train_split, seed=seed,
                         shuffle_buffer=d.shuffle_buffer, camera=d.camera, stats_dir=d.stats_dir or None,
                         augment=augment_config(setup.config) if train else None)
    return make_iterator(mixture, cfg)


def host_batch_fn(setup: Setup, split: str | None = None) -> Callable[[Any], dict]:
    """VLABatch -> dict of arrays for the device: prompts tokenized (left-padded), text and ids dropped; with
    config.cache set, cached token ids of `split` (default data.train_split) replace the frames they encode."""
    from latent_pretraining import token_cache

    template = setup.config.layout.template or None
    join = token_cache.from_config(setup.config, setup.window, setup.spec, split or setup.config.data.train_split)
    keys = BATCH_KEYS + (("proprio",) if setup.spec.proprio_slots else ())  # normalized, f32[B, 8]

    def fn(batch: Any) -> dict:
        d = batch.to_dict() if hasattr(batch, "to_dict") else dict(batch)
        d = join(d) if join is not None else d
        tasks = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(d["language"]).tolist()]
        prompts = [format_prompt(t, template) if template else format_prompt(t) for t in tasks]
        ids, mask = setup.tokenizer.encode_batch(prompts, setup.spec.prompt_len, bos=True, left_pad=True)
        out = {**{k: d[k] for k in keys if k in d}, "prompt_ids": ids, "prompt_mask": mask}
        return setup.batch_transform(out) if setup.batch_transform is not None else out

    return fn


def make_init_fn(setup: Setup) -> Callable[[jax.Array], PyTree]:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), setup.frozen_weights)

    how = setup.config.model.vision_embed_init
    lookup(("normal", "codebook"), how, "model.vision_embed_init")
    codebook = np.asarray(setup.frozen_weights["vqgan"]["quantize"]["embeddings"]) if how == "codebook" else None

    def init_fn(rng: jax.Array) -> PyTree:
        params = vla_init_params(setup.model_config, rng, boxed=True)["params"]
        if codebook is not None:
            box = params["vte"]["embedding"]
            table = codebook_embedding(box.value, codebook, jax.random.fold_in(rng, 7))
            params["vte"]["embedding"] = box.replace_boxed(table)
        frozen = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return {"params": params, "frozen": frozen}

    return init_fn


def codebook_embedding(table: jax.Array, codebook: np.ndarray, rng: jax.Array) -> jax.Array:
    """The vision input table ``[V, D]`` with its first ``K`` rows (the VQGAN codes) set to a random projection of
    the VQGAN codebook ``[K, c]`` (``model.vision_embed_init="codebook"``): codes that look alike start with alike
    embeddings, so what is learned for one code carries over to its neighbours, instead of every code starting as an
    independent random row that only its own occurrences train. Rows are centred, projected by a Gaussian [c, D] and
    scaled to the table's init std; the special rows (eof, eov) keep their init."""
    k, c = codebook.shape
    cb = jnp.asarray(codebook, jnp.float32)
    cb = (cb - cb.mean(0)) / (cb.std() + 1e-8)
    proj = jax.random.normal(rng, (c, table.shape[1]), jnp.float32) / np.sqrt(c)
    rows = cb @ proj
    rows = rows * (jnp.std(table) / (jnp.std(rows) + 1e-8))
    return table.at[:k].set(rows.astype(table.dtype))


def load_init_checkpoint(config: ml_collections.ConfigDict) -> PyTree | None:
    """Params of config.init.checkpoint: our converted format (`convert_checkpoint.py from-lwm` / `from-hf`) or a
    training run directory (e.g. a VideoLLaMA pretraining run, latest checkpoint), with LAPA / ViPRA names mapped to
    ours. Tables and heads it lacks keep their fresh normal(0.02) init (see video_llama)."""
    if not config.init.checkpoint:
        return None
    from latent_pretraining.convert.checkpoint import load_checkpoint, set_scan_layout_np

    run_dir = os.path.join(config.init.checkpoint, "checkpoints")
    if os.path.isdir(run_dir):
        from latent_pretraining.training.checkpoint import load_params

        return jax.tree.map(np.asarray, load_params(os.path.abspath(run_dir)))
    params, _ = load_checkpoint(config.init.checkpoint)
    params = set_scan_layout_np(params, bool(config.model.llama.scan_layers))
    return from_lineage(params) if config.init.lineage_names else params


def _matching(loaded: PyTree | None, init_fn: Callable) -> PyTree | None:
    """`loaded` without the entries the model does not have (e.g. pretraining-only tables when fine-tuning), logged."""
    if loaded is None:
        return None
    from latent_pretraining.convert.checkpoint import flatten, unflatten
    from latent_pretraining.training import sharding as sharding_lib

    want = flatten(sharding_lib.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0))["params"]))
    have = flatten(loaded)
    dropped = sorted("/".join(k) for k in have if k not in want)
    if dropped:
        logging.info("init checkpoint: %d entries the model does not use are dropped: %s", len(dropped),
                     ", ".join(dropped[:8]))
    return unflatten({k: v for k, v in have.items() if k in want})


def evaluate(setup: Setup, params: PyTree, model_state: PyTree, *, split: str, batches: int, seed: int = 1234,
             mesh: Any = None) -> dict[str, float]:
    """Held-out metrics averaged over `batches` batches (weighted by target counts), with chance levels.

    A collective: every process calls it with the training state's (globally sharded) params, feeds its own slice of
    each batch (the data iterator is per process) and gets the same result. `mesh` defaults to config.train.mesh."""
    from latent_pretraining.training import distributed
    from latent_pretraining.training import mesh as mesh_lib

    c = setup.config
    mesh = mesh if mesh is not None else mesh_lib.make_mesh(dict(c.train.mesh))
    fn = objective.make_eval_fn(setup.model, setup.spec, setup.frozen, dict(c.loss), setup.flow, c.cotrain_fraction)
    # metrics come back replicated so every process can read them (a process sees only its own devices' shards)
    replicate = jax.jit(lambda t: t, out_shardings=mesh_lib.replicated(mesh))
    batch_sharding = mesh_lib.batch_sharding(mesh, 1)
    it, prep = make_data(setup, split, seed), host_batch_fn(setup, split)
    sums: dict[str, float] = {}
    counts = np.zeros(max(setup.spec.latent_codebook, 1), np.int64)
    with jax.set_mesh(mesh):
        for i in range(batches):
            batch = distributed.to_global(prep(next(it)), batch_sharding)
            m = jax.device_get(replicate(fn(params, model_state, batch, jax.random.PRNGKey(seed + i))))
            if "latent_counts" in m:
                counts += np.asarray(m.pop("latent_counts"))
            for k, v in m.items():
                if k.startswith(("loss_", "acc_")):
                    head = k.split("_", 1)[1]
                    w = float(m.get(f"n_{head}", 1.0))
                    sums[k] = sums.get(k, 0.0) + float(v) * w
                    sums[f"_w_{k}"] = sums.get(f"_w_{k}", 0.0) + w
    out = {k: sums[k] / max(sums[f"_w_{k}"], 1e-9) for k in sums if not k.startswith("_w_")}
    if counts.sum():
        out["latent_chance"] = 1.0 / setup.spec.latent_codebook
        out["latent_majority"] = float(counts.max() / counts.sum())
        out["latent_targets"] = int(counts.sum())
    out["split"], out["batches"] = split, batches
    return out


class CurveHook(StepHistory):
    """Per-step losses/accuracies in `<workdir>/train_history.jsonl` (kept across resumes, replayed steps once);
    `write` saves curves.json and a PNG of the whole run."""

    def __init__(self, workdir: str) -> None:
        super().__init__(os.path.join(workdir, "train_history.jsonl"),
                         select=lambda k: k.startswith(("loss", "acc_")) or k == "lr")

    @property
    def rows(self) -> list[dict[str, float]]:
        return self.read()

    def write(self, workdir: str) -> dict[str, Any]:
        if jax.process_index() == 0:  # the history file is process 0's
            with open(os.path.join(workdir, "curves.json"), "w") as f:
                json.dump(self.rows, f)
        summary = {}
        n = max(1, len(self.rows) // 10)
        for key in sorted({k for r in self.rows for k in r if k != "step"}):
            vals = [r[key] for r in self.rows if key in r]
            if len(vals) >= 2:
                summary[key] = {"first_10pct": float(np.mean(vals[:n])), "last_10pct": float(np.mean(vals[-n:]))}
        if jax.process_index() == 0:
            try:
                from latent_pretraining.plots import plot_curves

                plot_curves(self.rows, os.path.join(workdir, "curves.png"))
            except ImportError:  # matplotlib missing: the JSON is enough
                pass
        return summary


def train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, overwrite: bool = False,
          latent: LatentLabeler | None = None, setup: Setup | None = None) -> dict[str, Any]:
    """Trains, evaluates on the held-out split and writes summary.json; returns the summary. `setup` (default
    `build(config, latent)`) lets a caller add assets or a host batch transform (policy fine-tuning does)."""
    from latent_pretraining.training import loop

    # a bad mesh / batch fails before any work
    loop.validate(config.train, batch_size=config.data.batch_size, batch_name="data.batch_size")
    workdir = os.path.abspath(workdir)
    setup = setup or build(config, latent)
    spec = setup.spec
    n_params = setup.model_config.llama.num_params()
    logging.info("%s/%s: sequence length %d, %d history frames x %d tokens, %.2fM backbone params", config.recipe,
                 config.preset, spec.length, spec.num_frames, spec.tokens_per_frame, n_params / 1e6)
    tokens = config.data.batch_size * spec.length
    curves = CurveHook(workdir)
    loss_fn = objective.make_loss_fn(setup.model, spec, setup.frozen, dict(config.loss), setup.flow,
                                     config.cotrain_fraction)
    data = make_data(setup, config.data.train_split, config.train.seed, train=True)
    # normalization stats travel with the checkpoint so a policy can de-normalize its actions
    assets = {**setup.assets, "norm_stats.json": {"mode": "normal", "datasets": data.statistics}}
    res = loop.run(config=config.train, workdir=workdir, resume=resume, overwrite=overwrite,
                   init_fn=make_init_fn(setup), loss_fn=loss_fn, data=data, assets=assets,
                   items_per_step=tokens, item_name="tokens",
                   flops_per_step=setup.model_config.llama.flops_per_token(spec.length) * tokens,
                   hooks=[curves], batch_fn=host_batch_fn(setup, config.data.train_split),
                   loaded_params=_matching(load_init_checkpoint(config), make_init_fn(setup)),
                   loaded_model_state={"frozen": setup.frozen_weights}, full_config=config,
                   batch_size=config.data.batch_size, data_fingerprint=getattr(data, "data_fingerprint", None))
    summary: dict[str, Any] = {"recipe": config.recipe, "preset": config.preset, "steps": res.step,
                               "sequence_length": spec.length, "train": curves.write(workdir)}
    if config.data.eval_batches > 0:  # every process: the params are sharded over all of them
        summary["eval"] = evaluate(setup, res.state.params, res.state.model_state, split=config.data.eval_split,
                                   batches=config.data.eval_batches)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def load_latent(config: ml_collections.ConfigDict) -> LatentLabeler | None:
    """The frozen LAM of `config.latent` (lam_workdir at step; step < 0 = latest), or None when lam_workdir is empty."""
    if not config.latent.lam_workdir:
        return None
    return lam_api.latent_labeler(config.latent.lam_workdir, int(config.latent.step))


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    logging.getLogger().setLevel(logging.INFO)
    from latent_pretraining.training import distributed

    distributed.initialize(f.config.train.distributed)  # multi-host: before anything touches a device
    summary = train(f.config, f.workdir, resume=f.resume, overwrite=f.overwrite, latent=load_latent(f.config))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    from ml_collections import config_flags

    from core import cli
    from latent_pretraining.training import loop as _loop

    config_flags.DEFINE_config_file("config", None, "e.g. configs/vipra.py:demo", lock_config=True)
    _loop.define_flags()
    cli.run_absl(main, trainer=True)
