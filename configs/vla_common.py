"""Shared pieces of the VideoLLaMA recipe configs (configs/lapa.py, configs/vipra.py).

`base()` is the full config tree with neutral values; each recipe file fills it per preset (values only). The frozen
LAM named by `latent.lam_workdir` / `latent.step` is loaded by latent_pretraining.train through lam.api.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from latent_pretraining.training import loop


def base() -> ml_collections.ConfigDict:
    """Every field a VideoLLaMA run reads (values are overridden by the presets)."""
    c = ml_collections.ConfigDict()
    c.recipe = ""  # a label for logs and summaries; behaviour comes from the fields below only
    c.preset = ""
    c.model = ml_collections.ConfigDict({
        "size": "debug",  # LLaMA preset (llama_config.PRESETS)
        # LlamaConfig fields (vocab_size comes from the text tokenizer); None = keep the size preset's value
        "llama": ml_collections.ConfigDict({
            "hidden_size": placeholder(int), "intermediate_size": placeholder(int), "num_layers": placeholder(int),
            "num_heads": placeholder(int), "num_kv_heads": placeholder(int), "head_dim": placeholder(int),
            "rms_eps": placeholder(float), "initializer_range": placeholder(float),
            "tie_embeddings": placeholder(bool), "rope_theta": 1e4, "dtype": "float32", "param_dtype": "float32",
            "remat": "none", "scan_layers": True, "max_seq_len": 2048,
            "attention_impl": "auto",  # auto: cuDNN on GPU (bf16/fp16), splash on TPU, else XLA
            "attention_q_chunk": placeholder(int), "loss_chunk": placeholder(int),
            "attention_kv_block": placeholder(int)}),
        "vision_vocab_size": 0,  # 0 = VQGAN codebook + 2 (eof, eov); the lineage uses 8192 + 256 = 8448
        "latent_vocab_size": 0,  # 0 = LAM codebook (+ 1 separator when layout.latent_separator)
        "action_vocab_size": 256,  # action-bin head (LAPA fine-tuning); 0 = none
        "action_dim": 7,  # continuous action encoder / velocity head; 0 = none
        # effector state as input: the first proprio_dim dims of the normalized 8-D proprio go through the proprio
        # encoder into one slot after the frames (layout.json proprio_slots = 1); 0 = no proprio input
        "proprio_dim": 0,
        # vision input table at a fresh init: "normal" (every code an independent random row) or "codebook" (a
        # random projection of the VQGAN codebook: look-alike codes start alike; train.codebook_embedding)
        "vision_embed_init": "normal",
    })
    c.layout = ml_collections.ConfigDict({
        "prompt_len": 64, "template": "", "future_frame": False, "latent_steps": 1, "latent_separator": False,
        "action_slots": 0, "action_tokens": 0, "bidirectional_actions": False,
        "video_open": " </vision> <delta>", "video_close": " </delta>",
        "action_open": " </vision> <action>", "action_close": " </action>",
    })
    # train_demo_if_missing: a missing `tokenizer` file is trained from the instructions of `corpus` ("demo" or
    # "metaworld": latent_pretraining/model/text_tokenizer.py CORPORA)
    c.text = ml_collections.ConfigDict({"tokenizer": "", "train_demo_if_missing": False, "demo_vocab_size": 512,
                                        "corpus": "demo"})
    c.vision = ml_collections.ConfigDict({"tokenizer": ""})  # VQGAN safetensors (scripts/convert_vqgan.py / vqgan)
    c.latent = ml_collections.ConfigDict({"lam_workdir": "", "step": -1})
    c.data = ml_collections.ConfigDict({
        "root": "runs/demo/data", "datasets": ("demo_robot", "demo_human"), "weights": (1.0, 1.0),
        "history_offsets": (0,), "horizon": 1, "clip_stride": 0,  # 0 = the LAM's own frame offset
        "camera": "",  # '' = each dataset's registry default camera; 'primary' | 'secondary' | 'wrist'
        "resolution": 64, "batch_size": 8, "shuffle_buffer": 10_000, "train_split": "train", "eval_split": "val",
        "eval_batches": 20, "reference_fps": 0.0,
        "stats_dir": "",  # normalization stats; '' = next to each dataset (else ~/.cache); `python -m data.stats`
        # training-batch image augmentation (data/augment.py, Octo-style): one random resized crop + colour jitter
        # per sample, shared by all its frames; never applied to evaluation batches. Frames must be tokenized in the
        # step (cache.image = ""): cached token ids are of un-augmented frames
        "augment": ml_collections.ConfigDict({"enabled": False, "crop_scale": (0.8, 1.0), "crop_ratio": (0.9, 1.1),
                                              "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.02}),
    })
    # offline token caches (latent_pretraining/token_cache.py); "" = tokenize inside the step. image: .npz path with
    # {split} (scripts/cache_image_tokens.py --split S, one file per split); latent: label dir (scripts/
    # label_latent_actions.py: <dir>/<dataset>/<split>.npz, from the same LAM as latent.lam_workdir)
    c.cache = ml_collections.ConfigDict({"image": "", "latent": ""})
    c.loss = ml_collections.ConfigDict({"text": 0.01, "vision": 0.0, "latent": 0.99, "action_bins": 0.0, "flow": 1.0})
    c.flow = ml_collections.ConfigDict({"sigma_min": 0.001, "time_dist": "beta", "beta_a": 1.5, "beta_b": 1.0,
                                        "t_max": 0.999, "steps": 10, "integrator": "euler"})
    c.cotrain_fraction = 0.0  # probability that a row WITH actions takes the action suffix (flow matching)
    c.init = ml_collections.ConfigDict({"checkpoint": "", "lineage_names": True})
    c.train = loop.default_config()
    c.train.optimizer.lr = 2e-5
    c.train.optimizer.schedule = "constant"
    c.train.optimizer.b2 = 0.95
    c.train.optimizer.clip_grad_norm = 1.0
    c.train.log.main_metrics = ("loss", "loss_latent", "acc_latent", "loss_flow")
    return c


def lwm_7b(c: ml_collections.ConfigDict) -> None:
    """The published backbone: LLaMA-2-7B as in LWM (θ = 5e7), bf16 compute, full remat, LWM's VQGAN vocabulary
    (8192 codes + 256 specials) at 256 px. "auto" attention: cuDNN flash attention on a GPU (bf16), Pallas splash
    attention on a TPU, XLA elsewhere (latent_pretraining/model/attention.py)."""
    c.model.size = "7b"
    c.model.llama.rope_theta = 5e7
    c.model.llama.dtype = "bfloat16"
    c.model.llama.remat = "nothing_saveable"
    c.model.llama.attention_impl = "auto"
    c.model.vision_vocab_size = 8448
    c.data.resolution = 256


def demo_model(c: ml_collections.ConfigDict) -> None:
    """A ~2M-parameter backbone that trains in minutes on 2 CPU cores."""
    c.model.size = "debug"
    ll = c.model.llama
    ll.hidden_size, ll.intermediate_size, ll.num_layers, ll.num_heads = 192, 512, 3, 4
    c.text.tokenizer = "runs/demo/text_tokenizer/tokenizer.model"
    c.text.train_demo_if_missing = True
    c.vision.tokenizer = "runs/vqgan_demo/tokenizer.safetensors"
    c.layout.prompt_len = 48
    c.train.optimizer.lr = 1e-3
    c.train.optimizer.schedule = "warmup_cosine"
    c.train.optimizer.warmup_steps = 30
    c.train.optimizer.end_lr = 1e-4
    c.train.optimizer.weight_decay = 0.0
    c.train.checkpoint.every = 200
    c.train.log.every = 20


def debug_model(c: ml_collections.ConfigDict) -> None:
    """Tests: a few thousand parameters, a handful of steps."""
    demo_model(c)
    ll = c.model.llama
    ll.hidden_size, ll.intermediate_size, ll.num_layers, ll.num_heads = 32, 64, 2, 2
    c.data.batch_size = 8  # divisible by the 8 fake test devices
    c.data.eval_batches = 2
    c.train.total_steps = 3
    c.train.checkpoint.every = 3
    c.train.log.every = 1
    c.train.optimizer.warmup_steps = 0

