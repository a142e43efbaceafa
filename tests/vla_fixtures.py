"""Shared tiny artefacts for the VideoLLaMA / policy tests: a demo-world SentencePiece model and a random VQGAN."""

from __future__ import annotations

import functools
import pathlib

from latent_pretraining.model import vqgan
from latent_pretraining.model.text_tokenizer import demo_corpus, train_sentencepiece

TINY_VQGAN = vqgan.VQGANConfig(resolution=64, hidden_channels=8, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1,
                               z_channels=8, num_embeddings=32, embed_dim=8, num_groups=4)  # 64 px -> 4x4 ids


@functools.cache
def _sentencepiece_model() -> bytes:
    """The demo SentencePiece model, trained once per session (training is deterministic, so every copy is equal)."""
    return train_sentencepiece(demo_corpus(), vocab_size=512)


def write_tokenizers(root: pathlib.Path) -> tuple[str, str]:
    """(text tokenizer .model path, random tiny VQGAN .safetensors path) written under `root`."""
    tok = root / "tokenizer.model"
    tok.write_bytes(_sentencepiece_model())
    vq_path = str(root / "vqgan.safetensors")
    vqgan.save_tokenizer(vq_path, vqgan.init_params(TINY_VQGAN), TINY_VQGAN)
    return str(tok), vq_path
