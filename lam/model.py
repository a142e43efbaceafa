"""The latent action model: encoder → NSVQ → decoder, one module whose variants (LAPA, ViPRA) are config values.

    clip float[B, T, H, W, 3] in [0, 1]  (LAPA: T = 2, frames t and t+offset; ViPRA: T frames; with
             decoder.context = 1 the clip leads with one more frame, t − offset, that only the decoder reads)
    encode:  patches → spatial/temporal transformer → per-transition code vectors z float[B, T-1, g, g, Dq]
             (LAPA: z = conv(enc(frame t+1)) − conv(enc(frame t)); ViPRA: conv3d over the features of frames 1..T-1;
             code_pool='mean': the g·g slots are linear maps of z's grid mean instead of one slot per grid cell;
             code_pool='max': of each channel's max and min over the patch grid (no strided convs);
             encoder.motion_stem > 0: a conv stem on consecutive-frame differences adds to the patch tokens)
    quantize: NSVQ → q float[B, T-1, g, g, Dq], ids int32[B, T-1, g, g]   (g×g codes per transition;
             slot_codebooks: slot (i, j) has its own codebook, else all slots share one)
    decode:  frames 0..T-2 + codes → frames 1..T-1 (float[B, T-1, H, W, 3]) and optionally flow (float[..., 2], px)
             'cross_attention' (LAPA): first-frame patches attend to the code tokens, per transition;
             'film' (ViPRA): a causal spatio-temporal transformer, FiLM on the codes, the codes as an extra token;
             decoder.context = 1: a motion stem on (each transition's first frame − the frame `offset` before it)
             adds to the decoder's tokens, so what moves at constant velocity (distractors) is predictable without
             the codes. The encoder, the codes and `label` never see the context frame.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lam import layers
from lam.config import check_kinds
from lam.quantizer import NSVQ, l2_normalize, lookup

Array = jax.Array


class PatchEmbed(nn.Module):
    """float[B, T, H, W, 3] → tokens float[B, T, H/p, W/p, D] (LayerNorm → Linear → LayerNorm)."""

    patch: int
    dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.LayerNorm()(layers.patchify(x, self.patch))  # modules named in call order: LayerNorm_0, Dense_0, ...
        return nn.LayerNorm()(nn.Dense(self.dim)(x))


class MotionStem(nn.Module):
    """Pixel differences of consecutive frames → tokens on the patch grid: clip float[B, T, H, W, 3] →
    float[B, T, H/p, W/p, D] (frame 0 gets the zero difference), added to the patch tokens before the transformer.
    log2(p) 3×3 stride-2 ReLU convs of `width` channels, then a linear map (a zero-initialised one stayed unused).
    Early fusion: a ~5 px effector that moves a few pixels is a strong local pattern in the difference image but a
    small change inside one 8×8 patch embedded per frame."""

    patch: int
    dim: int
    width: int

    @nn.compact
    def __call__(self, clip: Array) -> Array:
        b, t, hh, ww, c = clip.shape
        if self.patch & (self.patch - 1):
            raise ValueError(f"encoder.motion_stem needs a power-of-two patch size, got {self.patch}")
        diff = jnp.concatenate([jnp.zeros_like(clip[:, :1]), clip[:, 1:] - clip[:, :-1]], axis=1)
        x = diff.reshape(b * t, hh, ww, c)
        for i in range(self.patch.bit_length() - 1):
            x = nn.relu(nn.Conv(self.width, (3, 3), strides=2, name=f"conv{i}")(x))
        x = nn.Dense(self.dim, name="out")(x)
        return x.reshape(b, t, *x.shape[1:])


def _blocks(cfg: ml_collections.ConfigDict, depth: int, prefix: str, **kw: Any) -> list[layers.STBlock]:
    return [layers.STBlock(cfg.heads, cfg.dim_head, cosine=cfg.cosine, cpb_hidden=cfg.cpb_hidden, ff_mult=cfg.ff_mult,
                           name=f"{prefix}_{i}", **kw) for i in range(depth)]


class CodeEncoder(nn.Module):
    """Per-frame features float[B, T, h, w, D] → code vectors float[B, T-1, g, g, Dq] (3×3 convs, stride 2 per
    halving of h → g, at least two; ReLU after the first)."""

    quant_dim: int
    grid: int
    deltas: bool
    time_kernel: int = 1
    pool: str = "grid"  # 'grid': slot (i, j) is grid cell (i, j); 'mean' / 'max': slots are projections of the
    # grid mean / of each channel's grid max and min

    @nn.compact
    def __call__(self, feats: Array) -> Array:
        x = nn.Dense(self.quant_dim, name="project_in")(feats)
        if self.pool == "max":
            return self._max_pool(x)
        if not self.deltas:
            x = x[:, 1:]  # ViPRA: the code for t→t+1 is read at frame t+1 (the encoder is non-causal)
        h = size = x.shape[2]
        kt = 1 if self.deltas else self.time_kernel
        n_convs = max(2, (h // self.grid).bit_length() - 1)  # one stride-2 conv per halving, at least two convs
        for i in range(n_convs):
            stride = 2 if size // 2 >= self.grid else 1
            x = nn.Conv(self.quant_dim, (kt, 3, 3), strides=(1, stride, stride),
                        padding=((kt // 2, kt // 2), (1, 1), (1, 1)), name=f"conv{i}")(x)
            size = x.shape[2]
            if i == 0:
                x = nn.leaky_relu(x, 0.1) if kt > 1 else nn.relu(x)
        if size != self.grid:
            raise ValueError(f"code grid came out {size}x{size}, expected {self.grid}x{self.grid} from a {h}x{h} patch "
                             "grid; choose image_size / patch_size / code_grid so that h / code_grid is a power of two")
        x = x[:, 1:] - x[:, :-1] if self.deltas else x
        if self.pool == "mean":  # every slot reads the grid-mean motion through its own linear map (no slot ↔ place)
            g, dq = self.grid, self.quant_dim
            x = nn.Dense(g * g * dq, name="slots")(x.mean(axis=(2, 3))).reshape(*x.shape[:2], g, g, dq)
        elif self.pool != "grid":
            raise ValueError(f"model.code_pool must be 'grid', 'mean' or 'max', got {self.pool!r}")
        return x

    def _max_pool(self, x: Array) -> Array:
        """x float[B, T, h, w, Dq] → float[B, T-1, g, g, Dq]: a 3×3 conv + ReLU + linear map at full patch resolution,
        the per-transition change (or frame t+1's features), then each channel's largest and smallest value over
        the whole grid, projected into the g·g slots. A channel reads the strongest response anywhere instead of
        the average, so the fastest mover is not diluted by slower ones; no slot is tied to a place."""
        x = nn.relu(nn.Conv(self.quant_dim, (1, 3, 3), padding=((0, 0), (1, 1), (1, 1)), name="local")(x))
        x = nn.Dense(self.quant_dim, name="local_out")(x)
        x = x[:, 1:] - x[:, :-1] if self.deltas else x[:, 1:]
        pooled = jnp.concatenate([x.max(axis=(2, 3)), -x.min(axis=(2, 3))], axis=-1)
        g, dq = self.grid, self.quant_dim
        return nn.Dense(g * g * dq, name="slots")(pooled).reshape(*x.shape[:2], g, g, dq)


class LatentActionModel(nn.Module):
    """See the module docstring. `config` is the `model` block of configs/lam.py."""

    config: ml_collections.ConfigDict

    def setup(self) -> None:
        c = self.config
        check_kinds(c, "model")  # a typo'd kind fails here with the allowed values (lam/config.py KINDS)
        if c.encoder.kind == "dino":
            from lam.dino import Dinov2

            self.spatial_encoder = Dinov2(c.dino, name="dino")
            self.dino_proj = nn.Dense(c.dim, name="dino_proj")
        else:
            self.patch_embed = PatchEmbed(c.patch_size, c.dim, name="patch_embed")
        if c.encoder.motion_stem:
            if c.encoder.kind == "dino":
                raise ValueError("encoder.motion_stem works with encoder.kind='patch' (DINOv2 has its own grid)")
            self.motion_stem = MotionStem(c.patch_size, c.dim, int(c.encoder.motion_stem), name="motion_stem")
        peg = c.encoder.peg
        if c.encoder.layout == "factorized":  # LAPA: all spatial layers, then all temporal layers
            self.enc_blocks = (_blocks(c, c.encoder.spatial_depth, "enc_spatial", temporal=False, peg=peg)
                               + _blocks(c, c.encoder.temporal_depth, "enc_temporal", spatial=False, peg=peg))
        else:  # "interleaved" (ViPRA): interleaved spatio-temporal layers
            self.enc_blocks = _blocks(c, c.encoder.depth, "enc_st", peg=peg)
        self.enc_norm = layers.layer_norm("enc_norm")
        self.code_encoder = CodeEncoder(c.quant_dim, c.code_grid, c.encode_deltas, c.code_time_kernel,
                                        c.code_pool, name="code_encoder")
        self.code_groups = c.code_grid**2 if c.slot_codebooks else 1
        self.quantizer = NSVQ(c.codebook_size, c.quant_dim, c.quant_warmup_steps, c.quant_norm,
                              groups=self.code_groups, name="quantizer")
        d = c.decoder
        self.dec_patch = d.patch_size or c.patch_size
        if d.kind == "film" or self.dec_patch != c.patch_size:  # the decoder's own patch embedding
            self.dec_patch_embed = PatchEmbed(self.dec_patch, c.dim, name="dec_patch_embed")
        if d.kind == "cross_attention":
            self.project_out = nn.Dense(c.dim, name="project_out")
            self.dec_blocks = _blocks(c, d.depth, "dec", temporal=False, peg=d.peg, cross=True)
        elif d.kind == "film":
            self.cond_in = nn.Dense(c.dim, name="cond_in")
            self.cond_ff = layers.GEGLU(c.ff_mult, name="cond_ff")
            self.dec_blocks = _blocks(c, d.depth, "dec", causal=True, film=True, peg=d.peg)
        else:
            raise ValueError(f"model.decoder.kind must be 'cross_attention' or 'film', got {d.kind!r}")
        self.n_context = int(d.get("context", 0))
        if self.n_context:
            # the previous motion into each transition's first frame, on the decoder's patch grid. Not zero-initialised:
            # the encoder's motion stem with a zero-initialised output stayed unused (MotionStem), and the decoder's
            # residual output layers are zero-initialised anyway, so the start is still the copy-last predictor.
            self.context_stem = MotionStem(self.dec_patch, c.dim, max(c.dim // 2, 8), name="context_stem")
        self.dec_norm = layers.layer_norm("dec_norm")
        # residual decoders start as the copy-last-frame predictor (zero-initialised output layers)
        init = nn.initializers.zeros if c.decoder.residual else nn.initializers.lecun_normal()
        self.to_pixels = nn.Dense(self.dec_patch**2 * 3, kernel_init=init, name="to_pixels")
        if c.flow_head:
            self.to_flow = nn.Dense(self.dec_patch**2 * 2, kernel_init=nn.initializers.zeros, name="to_flow")
        if c.get("action_head", 0):  # reads the codes or the vectors before quantization (model.action_from)
            self.to_action = nn.Dense(int(c.action_head), name="to_action")

    def embed(self, clip: Array) -> Array:
        """clip float[B, T, H, W, 3] → patch tokens float[B, T, h, w, D]."""
        if self.config.encoder.kind == "dino":
            b, t = clip.shape[:2]
            tok = self.spatial_encoder.patch_tokens(clip.reshape(b * t, *clip.shape[2:]))
            g = round(tok.shape[1] ** 0.5)
            return self.dino_proj(tok).reshape(b, t, g, g, -1)
        return self.patch_embed(clip)

    def encode(self, clip: Array) -> Array:
        """clip float[B, T, H, W, 3] → pre-quantization code vectors z float[B, T-1, g, g, Dq]."""
        x = self.embed(clip)
        if self.config.encoder.motion_stem:
            x = x + self.motion_stem(clip)
        x, _ = layers.stack(self.enc_blocks, x)
        return self.code_encoder(self.enc_norm(x))

    def quantize(self, z: Array, *, train: bool) -> tuple[Array, Array]:
        """z float[B, T-1, g, g, Dq] → (codes float[B, T-1, g, g, Dq], ids int32[B, T-1, g, g])."""
        if self.code_groups == 1:
            return self.quantizer(z, train=train)
        q, ids = self.quantizer(z.reshape(*z.shape[:-3], self.code_groups, z.shape[-1]), train=train)
        return q.reshape(z.shape), ids.reshape(z.shape[:-1])

    def codes_from_ids(self, ids: Array) -> Array:
        """ids int32[B, T-1, g, g] → hard code vectors float[B, T-1, g, g, Dq] (effective codebook)."""
        cb = self.quantizer.variables["params"]["codebook"]
        shift = self.quantizer.get_variable("nsvq", "shift")
        flat = ids if self.code_groups == 1 else ids.reshape(*ids.shape[:-2], self.code_groups)
        codes = lookup(cb + shift, flat).reshape(*ids.shape, cb.shape[-1])
        return l2_normalize(codes) if self.config.quant_norm else codes

    def decode(self, frames: Array, codes: Array, context: Array | None = None) -> tuple[Array, Array | None]:
        """frames float[B, T-1, H, W, 3] (frames 0..T-2) + codes float[B, T-1, g, g, Dq] → predicted frames 1..T-1
        float[B, T-1, H, W, 3] and flow float[B, T-1, H, W, 2] (pixels, None without the flow head).

        context float[B, 1, H, W, 3]: the frame `offset` before frames[:, 0]; required iff decoder.context = 1.
        Transition i's previous motion is frames[i] − (context if i = 0 else frames[i-1])."""
        c = self.config
        b, n = codes.shape[:2]
        if (context is None) != (not self.n_context):
            raise ValueError(f"model.decoder.context={self.n_context} but decode got "
                             f"{'no context frame' if context is None else 'a context frame'}")
        motion = self.context_stem(jnp.concatenate([context, frames], 1))[:, 1:] if self.n_context else 0.0
        if c.decoder.kind == "cross_attention":
            # queries: the (detached) patch embedding of each transition's first frame (the decoder's own embedding
            # when decoder.patch_size differs from the encoder's); keys: its g·g code tokens
            if self.dec_patch != c.patch_size:
                q = self.dec_patch_embed(frames)
            else:
                q = jax.lax.stop_gradient(self.embed(frames)) if c.decoder.detach_queries else self.embed(frames)
            ctx = self.project_out(codes.reshape(b, n, -1, codes.shape[-1]))
            q = q + motion  # after the detach: the context stem learns from the reconstruction
            x = q.reshape(b * n, 1, *q.shape[2:])
            x, _ = layers.stack(self.dec_blocks, x, context=ctx.reshape(b * n, 1, *ctx.shape[2:]))
            x = x.reshape(b, n, *x.shape[2:])
        else:
            x = self.dec_patch_embed(frames) + motion
            cond = self.cond_ff(self.cond_in(codes.reshape(b, n, -1)))
            x, _ = layers.stack(self.dec_blocks, x, cond[:, :, None], cond=cond)
        x = self.dec_norm(x)
        pix = layers.unpatchify(self.to_pixels(x), self.dec_patch, 3)
        if c.decoder.residual:
            pix = pix + frames
        flow = layers.unpatchify(self.to_flow(x), self.dec_patch, 2) * c.flow_scale if c.flow_head else None
        return pix, flow

    def __call__(self, clip: Array, *, train: bool = False) -> dict[str, Array]:
        """clip float[B, context + T, H, W, 3] (decoder.context leading frames, see the module docstring) →
        {'pred', 'flow' (if head), 'ids', 'z', 'action' float[B, T-1, model.action_head] (if head)} of the
        T-frame clip after the context."""
        context, clip = split_context(clip, self.n_context)
        z = self.encode(clip)
        q, ids = self.quantize(z, train=train)
        pred, flow = self.decode(clip[:, :-1], q, context)
        out = {"pred": pred, "ids": ids, "z": z}
        if flow is not None:
            out["flow"] = flow
        if self.config.get("action_head", 0):
            src = z if self.config.get("action_from", "codes") == "latent" else q
            out["action"] = self.to_action(src.reshape(*src.shape[:2], -1))
        return out

    def label(self, clip: Array) -> Array:
        """clip float[B, T, H, W, 3] → hard code ids int32[B, T-1, g, g] (no decoder run)."""
        return self.quantize(self.encode(clip), train=False)[1]


def split_context(clip: Array, context: int) -> tuple[Array | None, Array]:
    """clip float[B, context + T, ...] → (its context frames float[B, context, ...] or None when context = 0, the
    T-frame clip)."""
    if not context:
        return None, clip
    if clip.shape[1] < context + 2:
        raise ValueError(f"a clip with {context} context frame(s) needs at least {context + 2} frames, got "
                         f"{clip.shape[1]}")
    return clip[:, :context], clip[:, context:]


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
