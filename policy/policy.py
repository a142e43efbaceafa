"""A trained VideoLLaMA checkpoint as a policy: raw history frames + instruction -> de-normalized action chunk.

    policy = Policy.from_checkpoint("runs/vla_demo/vipra")          # workdir (or its checkpoints/ folder)
    policy.warmup()                                                # compiles once (batch 1)
    meta = policy.metadata()                                       # resolution, history_offsets, H, A, ...
    chunk = policy.act(frames_u8, "push the red block to the left", seed=0)    # f32[H, A]
    chunk = policy.act(frames_u8, text, proprio=state)    # a policy with the effector state as input (proprio_dim)

Everything the transforms need comes from the checkpoint: params (`params` item), the frozen VQGAN weights
(`train_state` item, `model_state["frozen"]["vqgan"]`, restored alone), and the assets written by
`latent_pretraining.train`: config.json, video_llama.json, layout.json, tokenizer.model, frozen.json,
norm_stats.json and, for the LAPA fine-tuning recipe, action_bins.json.

What `act` does, exactly as training (latent_pretraining/train.py host_batch_fn + objective.forward):
1. frames uint8[W, R, R, 3] (the history frames at metadata()["history_offsets"], oldest first) are squashed to the
   training resolution (bilinear, antialiased, rounded, like data/augment.decode_frames) when their size differs;
2. the instruction is formatted with the run's template (text_tokenizer.format_prompt) and tokenized left-padded to
   `spec.prompt_len` with BOS;
2b. a layout with a proprio slot (layout.json proprio_slots = 1, video_llama.json proprio_dim = P; the
   fine-tuning config's model.proprio_dim) needs `proprio`: the RAW state the dataset stores as its proprio (the demo
   world: observation/state, effector xy), at most 8 values; it is zero-padded to the pipeline's 8 dims, normalized
   with the same statistics and mode as training (norm_stats.json "proprio" of metadata()["dataset"]) and its first
   P values go into the slot. act() without it raises one UserError; a policy without the slot ignores it;
3. the VQGAN encodes the frames (jitted with the rest) and `sequence.assemble(..., action_row=True)` builds the
   action-suffix layout;
4. continuous slots (`spec.action_slots`): `sampler.flow_sample_cached` from noise N(0, I) drawn from `seed`
   (deterministic, unlike LAPA); discrete tokens (`spec.action_tokens`, LAPA fine-tuning): `sampler.greedy_decode`
   of H·A action-bin ids, then the bin centres of action_bins.json. Each id is the argmax, as LAPA decodes
   (`bin_temperature=0`, the default), or drawn from the bins' softmax at that temperature, seeded by `seed`
   (`bin_temperature > 0`): argmax favours values the demos hold many times (0, the speed limit) whenever the
   model is unsure, sampling follows the predicted distribution like the flow head (docs/comparison_log.md,
   "Why the LAPA layout is flat in N");
5. de-normalization with `data.normalization.unnormalize(y, stats, "action", mode)` using the stats of
   metadata()["dataset"] (default: the first dataset of config.data.datasets whose stats have
   num_action_transitions > 0). A checkpoint without norm_stats.json returns the model's (normalized) output and
   says so in metadata()["normalization"];
6. the gripper dimension (index 6 of the standardized 7-D OXE action, 1 = open) is clipped to the dataset's range
   (`gripper="clip"`, the default) or snapped to its nearer end (`"binarize"`), or left alone (`"none"`). The range is
   `gripper_range` if given, else the min/max of that dimension in the normalization statistics. Why: the gripper is
   not normalized (its mask is False), so a flow head's raw output reaches the robot as is; a ViPRA flow policy on
   Bridge data returned 1.20 and -0.14 for a dataset whose gripper is in [0, 1]. metadata()["gripper"] says what is
   applied. The option comes from the constructor, else policy.json's "gripper" / "gripper_range" / "gripper_dim".

Thread safety: the object holds no per-call mutable state; compiled functions are created under a lock and are
themselves safe to call concurrently. `reset()` exists for the server's `/reset` and clears nothing (the policy is
stateless: the caller sends the whole history every call).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from core.errors import UserError, unknown
from latent_pretraining import flow
from latent_pretraining.model import heads, vqgan
from latent_pretraining.model.text_tokenizer import PROMPT_TEMPLATE, TextTokenizer, format_prompt
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig
from latent_pretraining.sequence import LayoutSpec, assemble
from latent_pretraining.training.checkpoint import read_assets, verified_step
from policy import sampler
from policy.action_tokenizer import bin_centers, decode_bins
from policy.metadata import GRIPPER_MODES, PolicyMetadata

__all__ = ["Policy", "checkpoint_dir", "gripper_postprocess", "layout_from_dict"]

OXE_GRIPPER_DIM = 6  # data/oxe.py: action = xyz(3), rpy(3), gripper(1), 1 = open

PyTree = Any


# ------------------------------------------------------------------------------------------------------ helpers
def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints` when it exists (a training workdir), else `workdir` itself."""
    sub = os.path.join(workdir, "checkpoints")
    return os.path.abspath(sub if os.path.isdir(sub) else workdir)


def _restore_single_device(item_dir: str, select: Any = None) -> PyTree:
    """Restores an Orbax PyTree item onto the first local device (whatever the mesh it was saved from).

    `select(tree_metadata) -> subtree` picks a part (restored alone: `partial_restore`); None = everything."""
    ck = ocp.PyTreeCheckpointer()
    md = ck.metadata(item_dir)
    md = getattr(md, "item_metadata", md)
    tree = md.tree if hasattr(md, "tree") else md
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = tree if select is None else select(tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), item)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
    return ck.restore(item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                            partial_restore=select is not None))


def layout_from_dict(d: Mapping[str, Any]) -> LayoutSpec:
    """LayoutSpec from layout.json (lists back to tuples; fields this version of LayoutSpec lacks are rejected)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(LayoutSpec)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"layout.json has fields this LayoutSpec does not know: {sorted(unknown)}")
    return LayoutSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def gripper_postprocess(actions: np.ndarray, dim: int, mode: str, lo: float, hi: float) -> np.ndarray:
    """actions f32[..., A] with column `dim` clipped to [lo, hi] ("clip") or set to whichever of lo / hi is nearer
    ("binarize"; the midpoint goes to hi, i.e. open for OXE grippers); "none" returns them unchanged. A copy."""
    out = np.array(actions, np.float32, copy=True)
    if mode == "clip":
        out[..., dim] = np.clip(out[..., dim], lo, hi)
    elif mode == "binarize":
        out[..., dim] = np.where(out[..., dim] >= (lo + hi) / 2, hi, lo)
    elif mode != "none":
        raise UserError(unknown("gripper mode", mode, GRIPPER_MODES))
    return out


def _json(assets: Mapping[str, bytes], name: str) -> Any:
    return json.loads(assets[name].decode()) if name in assets else None


# ------------------------------------------------------------------------------------------------------- policy
class Policy:
    """See the module docstring. Build with `Policy.from_checkpoint`; the constructor takes loaded pieces."""

    def __init__(self, *, config: ml_collections.ConfigDict, model_config: VideoLlamaConfig, spec: LayoutSpec,
                 params: PyTree, vqgan_config: vqgan.VQGANConfig, vqgan_params: PyTree, tokenizer: TextTokenizer,
                 norm_stats: Mapping[str, Any] | None = None, action_bins: Any = None, step: int | None = None,
                 dataset: str | None = None, steps: int | None = None, integrator: str | None = None,
                 source: str = "", policy_info: Mapping[str, Any] | None = None, gripper: str | None = None,
                 gripper_range: Sequence[float] | None = None, gripper_dim: int | None = None,
                 bin_temperature: float = 0.0) -> None:
        self.config = config
        self.policy_info = dict(policy_info or {})  # policy.json of a fine-tuning run (recipe, demos, execute_steps)
        self.model_config = model_config
        self.model = VideoLlama(model_config)
        self.spec = spec
        self.params = params
        self.vqgan_config = vqgan_config
        self.vqgan_params = vqgan_params
        self.tokenizer = tokenizer
        self.step = step
        self.source = source
        self.flow_cfg = flow.FlowConfig(**config.flow.to_dict()) if "flow" in config else flow.FlowConfig()
        self.steps = int(steps or self.flow_cfg.steps)
        self.integrator = integrator or self.flow_cfg.integrator
        if not (np.isfinite(bin_temperature) and bin_temperature >= 0):
            raise UserError(f"bin_temperature must be >= 0 (0 = argmax), got {bin_temperature}")
        self.bin_temperature = float(bin_temperature)  # step 4: 0 = argmax (LAPA); > 0 = sample the bins
        self.template = (config.layout.get("template", "") or None) if "layout" in config else None
        self.resolution = int(config.data.resolution)
        self.history_offsets = tuple(int(x) for x in config.data.history_offsets)
        if len(self.history_offsets) != spec.num_frames:
            raise ValueError(f"config.data.history_offsets {self.history_offsets} vs {spec.num_frames} frames")
        self.action_tokens = int(getattr(spec, "action_tokens", 0) or 0)
        self.proprio_dim = int(model_config.proprio_dim) if spec.proprio_slots else 0  # 0: no state input
        if self.bin_temperature and not self.action_tokens:
            raise UserError(f"bin_temperature {self.bin_temperature} applies to action-bin policies (the LAPA layout); "
                            "this checkpoint's layout has no action-bin tokens")
        if self.action_tokens:
            if action_bins is None:
                raise ValueError("this layout decodes discrete action tokens but the checkpoint has no "
                                 "action_bins.json asset")
            self.centers = bin_centers(action_bins)
            self.action_dim = len(self.centers)
            if self.action_tokens % self.action_dim:
                raise ValueError(f"layout.action_tokens {self.action_tokens} is not a multiple of the "
                                 f"{self.action_dim} dimensions of action_bins.json")
            self.horizon = self.action_tokens // self.action_dim
            normalized = action_bins.get("normalized", True) if isinstance(action_bins, Mapping) else True
            self.bins_normalized = bool(normalized)
        elif spec.action_slots:
            self.centers = None
            self.action_dim = model_config.action_dim
            self.horizon = spec.action_slots
            self.bins_normalized = True
        else:  # a pretraining-only layout (e.g. LAPA latent pretraining): latent_actions() works, act() does not
            self.centers = None
            self.action_dim = model_config.action_dim
            self.horizon = 0
            self.bins_normalized = True
        self.norm_mode = "none"
        self.stats = None
        self.dataset = dataset
        if norm_stats:
            self.norm_mode = norm_stats.get("mode", "normal")
            per = norm_stats.get("datasets", {})
            if dataset is None:
                names = [n for n in config.data.datasets if n in per] + [n for n in per if n not in
                                                                           config.data.datasets]
                with_actions = [n for n in names if per[n].get("num_action_transitions", 0) > 0]
                self.dataset = with_actions[0] if with_actions else None
            if self.dataset is not None:
                if self.dataset not in per:
                    raise KeyError(f"no normalization stats for dataset {self.dataset!r}; have {sorted(per)}")
                self.stats = per[self.dataset]
        self.gripper = self._gripper_setup(gripper, gripper_range, gripper_dim)
        self._lock = threading.Lock()
        self._fns: dict[Any, Any] = {}

    def _gripper_setup(self, mode: str | None, rng: Sequence[float] | None, dim: int | None) -> dict[str, Any]:
        """{"dim", "mode", "range", "source"} from the arguments, else policy.json, else the defaults (see step 6)."""
        info = self.policy_info
        mode = mode if mode is not None else info.get("gripper", "clip")
        if mode not in GRIPPER_MODES:
            raise UserError(unknown("gripper mode", mode, GRIPPER_MODES))
        dim = dim if dim is not None else info.get("gripper_dim")
        if dim is None:
            dim = OXE_GRIPPER_DIM if self.action_dim == 7 else None
        elif not 0 <= int(dim) < self.action_dim:
            raise UserError(f"gripper_dim {dim} is outside the {self.action_dim} action dimensions")
        rng = rng if rng is not None else info.get("gripper_range")
        source = "explicit" if rng is not None else None
        if rng is None and dim is not None and self.stats is not None and {"min", "max"} <= set(self.stats["action"]):
            rng = (self.stats["action"]["min"][dim], self.stats["action"]["max"][dim])
            source = f"normalization statistics of {self.dataset!r}"
        if rng is not None:
            lo, hi = (float(x) for x in rng)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise UserError(f"gripper range [{lo}, {hi}] must be two finite numbers with lo <= hi")
            rng = [lo, hi]
        if dim is None or rng is None:  # nothing to clip to: say so rather than guess
            why = "no gripper dimension (action_dim != 7)" if dim is None else "no range (no stats, none given)"
            return {"dim": dim, "mode": "none", "range": None, "source": why}
        return {"dim": int(dim), "mode": mode, "range": rng, "source": source}

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, *, dataset: str | None = None,
                        steps: int | None = None, integrator: str | None = None, gripper: str | None = None,
                        gripper_range: Sequence[float] | None = None, bin_temperature: float = 0.0) -> Policy:
        """Loads a training workdir (or its checkpoints/ folder) at `step` (default: the latest complete one).

        dataset: whose normalization stats de-normalize (default: see the module docstring); steps / integrator:
        override the run's config.flow for sampling; gripper / gripper_range: see step 6 of the module docstring;
        bin_temperature: see step 4."""
        directory = checkpoint_dir(workdir)
        step = verified_step(directory, step)
        assets = read_assets(directory, step)
        missing = [n for n in ("config.json", "video_llama.json", "layout.json", "tokenizer.model", "frozen.json")
                   if n not in assets]
        if missing:
            raise FileNotFoundError(f"checkpoint {directory}/{step} lacks the assets {missing}")
        config = ml_collections.ConfigDict(_json(assets, "config.json"))
        mcfg = VideoLlamaConfig.from_dict(_json(assets, "video_llama.json"))
        spec = layout_from_dict(_json(assets, "layout.json"))
        frozen = _json(assets, "frozen.json")
        vq_cfg = vqgan.VQGANConfig.from_dict({k: v for k, v in frozen["vqgan"].items() if k != "path"})
        root = os.path.join(directory, str(step))
        params = _restore_single_device(os.path.join(root, "params"))
        pick = lambda t: {"model_state": {"frozen": {"vqgan": t["model_state"]["frozen"]["vqgan"]}}}
        vq = _restore_single_device(os.path.join(root, "train_state"), pick)
        vq_params = vq["model_state"]["frozen"]["vqgan"]
        return cls(config=config, model_config=mcfg, spec=spec, params=params, vqgan_config=vq_cfg,
                   vqgan_params=vq_params, tokenizer=TextTokenizer.from_bytes(assets["tokenizer.model"]),
                   norm_stats=_json(assets, "norm_stats.json"), action_bins=_json(assets, "action_bins.json"),
                   step=step, dataset=dataset, steps=steps, integrator=integrator, source=directory,
                   policy_info=_json(assets, "policy.json"), gripper=gripper, gripper_range=gripper_range,
                   bin_temperature=bin_temperature)

    # ------------------------------------------------------------------------------------------------- info
    def metadata_record(self) -> PolicyMetadata:
        """The observation / action contract as a typed record (policy/metadata.py)."""
        return PolicyMetadata(
            image_size=self.resolution,
            history_offsets=self.history_offsets,
            action_dim=self.action_dim,
            chunk=self.horizon,  # 0 for a pretraining-only layout (act() refuses; the server does too)
            recipe=str(self.config.get("recipe", "")),
            preset=str(self.config.get("preset", "")),
            checkpoint=self.source,
            step=self.step,
            execute_steps=int(self.policy_info.get("execute_steps") or 0) or None,
            num_demos=self.policy_info.get("num_demos"),
            action_kind="bins" if self.action_tokens else ("flow" if self.horizon else "none"),
            latent_actions=((self.spec.latent_steps, self.spec.codes_per_step) if self.spec.latent_steps else None),
            instruction_template=self.template or PROMPT_TEMPLATE,
            prompt_len=self.spec.prompt_len,
            sampler=(({"kind": "greedy", "tokens": self.action_tokens} if not self.bin_temperature else
                      {"kind": "sample", "tokens": self.action_tokens, "temperature": self.bin_temperature})
                     if self.action_tokens else
                     {"kind": "flow", "steps": self.steps, "integrator": self.integrator,
                      "bidirectional": self.spec.bidirectional_actions} if self.horizon else {"kind": "none"}),
            dataset=self.dataset,
            normalization=(self.norm_mode if self.stats is not None else "none (no norm_stats.json: raw model output)"),
            gripper=dict(self.gripper),
            # only a policy with the effector state as input says so (older consumers see the same record as before)
            extra={"proprio_dim": self.proprio_dim} if self.proprio_dim else {},
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-able description of the observation / action contract (served at /metadata): the record's dict."""
        return self.metadata_record().to_dict()

    def reset(self) -> None:
        """Nothing to clear: the policy keeps no episode state (the caller sends the frame history each call)."""

    # ---------------------------------------------------------------------------------------------- compute
    def _normalized_fn(self, batch: int) -> Any:
        """jitted (params, vq_params, frames u8[B, W, R, R, 3], prompt ids/mask, key) -> f32[B, H, A] (normalized;
        for bins: int32[B, H·A] ids)."""
        with self._lock:
            if batch in self._fns:
                return self._fns[batch]
            spec, model, vq_cfg = self.spec, self.model, self.vqgan_config
            n_tok, fcfg, steps, integrator = self.action_tokens, self.flow_cfg, self.steps, self.integrator
            temp = self.bin_temperature
            h, a = self.horizon, self.action_dim
            n_bins = max(len(c) for c in self.centers) if self.centers else None  # only ids that have a bin
            head = heads.action_head(spec, model.config)
            if head is None or head.discrete != bool(n_tok):
                raise ValueError(f"the model has no head for this layout's action suffix (found {head!r})")

            def run(params, vq_params, frames, prompt_ids, prompt_mask, key, proprio):
                b = frames.shape[0]
                ids = vqgan.encode_fn(vq_params, frames, config=vq_cfg).reshape(b, spec.num_frames, -1)
                kw = {"action_token_ids": jnp.zeros((b, n_tok), jnp.int32)} if n_tok else {}
                if spec.future_frame:
                    kw["future_ids"] = jnp.zeros((b, spec.tokens_per_frame), jnp.int32)
                if spec.latent_steps:
                    kw["latent_ids"] = jnp.zeros((b, spec.latent_steps, spec.codes_per_step), jnp.int32)
                seq = assemble(spec, prompt_ids, prompt_mask, ids, action_row=jnp.ones((b,), bool),
                               proprio=proprio if spec.proprio_slots else None, **kw)
                if head.discrete:  # the head table's action head: token by token, else integrated from noise
                    start = spec.prefix_len + len(spec.action_open)
                    sample = {"rng": key, "temperature": temp} if temp else {}
                    return sampler.greedy_decode(model, params, seq, spec, start, n_tok, None, head.name,
                                                 vocab=n_bins, **sample)
                # row i draws from fold_in(key, i): a row's chunk does not depend on the batch size
                noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (h, a), jnp.float32))(
                    jnp.arange(b))
                return sampler.flow_sample_cached(model, params, seq, spec, noise, fcfg, steps, integrator)

            fn = jax.jit(run)
            self._fns[batch] = fn
            return fn

    def _latent_fn(self, batch: int) -> Any:
        """jitted (params, vq_params, frames, prompt ids/mask) -> int32[B, S, C] greedy latent-action codes (video
        suffix; with a future-frame layout (ViPRA) the future frame's g² ids are greedily decoded first)."""
        key = ("latent", batch)
        with self._lock:
            if key in self._fns:
                return self._fns[key]
            spec, model, vq_cfg = self.spec, self.model, self.vqgan_config
            g, s, c = spec.tokens_per_frame, spec.latent_steps, spec.codes_per_step

            def run(params, vq_params, frames, prompt_ids, prompt_mask):
                b = frames.shape[0]
                ids = vqgan.encode_fn(vq_params, frames, config=vq_cfg).reshape(b, spec.num_frames, -1)
                kw = {"latent_ids": jnp.zeros((b, s, c), jnp.int32)}
                if spec.future_frame:
                    kw["future_ids"] = jnp.zeros((b, g), jnp.int32)
                if getattr(spec, "action_tokens", 0):
                    kw["action_token_ids"] = jnp.zeros((b, spec.action_tokens), jnp.int32)
                seq = assemble(spec, prompt_ids, prompt_mask, ids, action_row=jnp.zeros((b,), bool), **kw)
                if spec.future_frame:
                    fut = sampler.greedy_decode(model, params, seq, spec, spec.prefix_len, g, None, "vision",
                                                vocab=spec.vision_codebook)
                    seq = seq.replace(ids=seq.ids.at[:, spec.prefix_len:spec.prefix_len + g].set(fut))
                force = None
                if spec.latent_separator:  # codes < codebook, the separator where training puts it
                    force = tuple(([-1] * c + [spec.separator]) * s)
                lat = sampler.greedy_decode(model, params, seq, spec, spec.latent_start, s * spec.step_len, None,
                                            "latent", vocab=spec.latent_codebook, force=force)
                return lat.reshape(b, s, spec.step_len)[..., :c]

            fn = jax.jit(run)
            self._fns[key] = fn
            return fn

    def latent_actions(self, images: Any, instruction: str | Sequence[str]) -> np.ndarray:
        """Greedy latent-action codes int32[S, C] (or [B, S, C]) for layouts with a video suffix (LAPA / ViPRA
        latent pretraining; LAPA's DeltaSampler, without its EOS-id-2 quirk)."""
        if not self.spec.latent_steps:
            raise ValueError("this layout has no latent actions")
        frames, single = self._frames(images)
        ids, mask = self.prompt(self._texts(instruction, frames.shape[0]))
        out = np.asarray(self._latent_fn(frames.shape[0])(self.params, self.vqgan_params, frames, ids, mask))
        return out[0] if single else out

    @staticmethod
    def _texts(instruction: str | Sequence[str], b: int) -> list[str]:
        texts = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(texts) != b or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"instruction must be a str or a list of {b} str")
        return texts

    def _frames(self, images: Any) -> tuple[np.ndarray, bool]:
        x = np.asarray(images)
        single = x.ndim == 4
        if single:
            x = x[None]
        w = self.spec.num_frames
        if x.ndim != 5 or x.shape[1] != w or x.shape[-1] != 3:
            raise ValueError(f"images must be uint8[{w}, R, R, 3] or [B, {w}, R, R, 3] (the frames at history "
                             f"offsets {list(self.history_offsets)}, oldest first), got shape {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {x.dtype}")
        if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"empty images {x.shape}")
        r = self.resolution
        if x.shape[2:4] != (r, r):
            b = x.shape[0]
            y = jax.image.resize(jnp.asarray(x, jnp.float32), (b, w, r, r, 3), "linear", antialias=True)
            x = np.asarray(jnp.clip(jnp.round(y), 0, 255)).astype(np.uint8)
        return x, single

    def prompt(self, instructions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32[B, P], mask bool[B, P]) exactly as training tokenizes prompts (left-padded, BOS first)."""
        texts = [format_prompt(t, self.template) if self.template else format_prompt(t) for t in instructions]
        return self.tokenizer.encode_batch(texts, self.spec.prompt_len, bos=True, left_pad=True)

    def normalize_proprio(self, proprio: Any, b: int) -> np.ndarray:
        """Raw state f32[p] or [B, p] (p <= 8, the dataset's proprio units) -> the model's input f32[B, proprio_dim]:
        zero-padded to 8, normalized exactly as the data pipeline does (data.normalization.normalize with this
        policy's stats and mode), first proprio_dim values (step 2b of the module docstring)."""
        from data.oxe import PROPRIO_DIM

        if proprio is None:
            raise UserError(f"this policy takes the effector state as input (proprio_dim {self.proprio_dim}): pass "
                            f"proprio=<the raw state, {self.proprio_dim} to {PROPRIO_DIM} floats, as the dataset's "
                            "proprio> to act()")
        x = np.asarray(proprio, np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[0] != b or not self.proprio_dim <= x.shape[1] <= PROPRIO_DIM:
            raise UserError(f"proprio must be f32[p] or [B={b}, p] with {self.proprio_dim} <= p <= {PROPRIO_DIM}, "
                            f"got shape {np.shape(proprio)}")
        if not np.all(np.isfinite(x)):
            raise UserError("proprio has non-finite values")
        x = np.pad(x, ((0, 0), (0, PROPRIO_DIM - x.shape[1])))
        if self.stats is not None and "proprio" in self.stats:
            from data.normalization import normalize

            x = np.asarray(normalize(x, self.stats, "proprio", self.norm_mode), np.float32)
        return x[:, :self.proprio_dim]

    def act_normalized(self, images: Any, instruction: str | Sequence[str], *, seed: int = 0,
                       proprio: Any = None) -> np.ndarray:
        """The model's action chunk before de-normalization, f32[H, A] or [B, H, A] (bins: their centres)."""
        if not self.horizon:
            raise ValueError("this checkpoint's layout has no action suffix (neither action_slots nor action_tokens):"
                             " it is a pretraining-only layout; use latent_actions()")
        frames, single = self._frames(images)
        b = frames.shape[0]
        ids, mask = self.prompt(self._texts(instruction, b))
        key = jax.random.PRNGKey(int(seed))
        state = self.normalize_proprio(proprio, b) if self.proprio_dim else np.zeros((b, 0), np.float32)
        out = np.asarray(self._normalized_fn(b)(self.params, self.vqgan_params, frames, ids, mask, key, state))
        if self.action_tokens:
            out = decode_bins(out, self.centers)
        out = out.astype(np.float32)
        return out[0] if single else out

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        """Inverse of the data pipeline's action normalization for metadata()["dataset"] (identity without stats,
        or for action bins fitted on raw actions: action_bins.json {"normalized": false})."""
        if self.stats is None or not self.bins_normalized:
            return np.asarray(y, np.float32)
        from data.normalization import unnormalize

        a = np.asarray(y, np.float32)
        width = len(self.stats["action"]["mean"])
        if a.shape[-1] != width:
            raise ValueError(f"actions have {a.shape[-1]} dims but the stats of {self.dataset!r} have {width}")
        return np.asarray(unnormalize(a, self.stats, "action", self.norm_mode), np.float32)

    def act(self, images: Any, instruction: str | Sequence[str], *, seed: int = 0, proprio: Any = None
            ) -> np.ndarray:
        """De-normalized action chunk f32[H, A] (images uint8[W, R, R, 3]) or f32[B, H, A] ([B, W, R, R, 3]).

        proprio: the raw effector state f32[p] / [B, p], required when the policy has a proprio slot (step 2b);
        ignored otherwise.

        Deterministic: the flow noise comes from `seed` (the same seed gives the same chunk). The gripper dimension
        is post-processed as metadata()["gripper"] says (step 6 of the module docstring)."""
        # proprio only when given: act_normalized overrides / stand-ins without the argument keep working
        kw = {"proprio": proprio} if proprio is not None else {}
        a = self.denormalize(self.act_normalized(images, instruction, seed=seed, **kw))
        g = self.gripper
        if g["mode"] == "none":
            return a
        return gripper_postprocess(a, g["dim"], g["mode"], *g["range"])

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Compiles (and runs once) the act function for each batch size."""
        r, w = self.resolution, self.spec.num_frames
        for b in batch_sizes:
            state = np.zeros((b, self.proprio_dim), np.float32) if self.proprio_dim else None
            self.act(np.zeros((b, w, r, r, 3), np.uint8), ["warm up"] * b, proprio=state)
