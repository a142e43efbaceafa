"""SentencePiece text tokenizer (LLaMA convention: unk 0, bos 1, eos 2, pad = 0) and a small demo-world tokenizer.

As in LAPA/ViPRA, the sequence markers (``<vision>``, ``</vision>``, ``<dynamics>``, ...) are plain text tokenized by
SentencePiece, not added vocabulary entries; the prompt template drops the literal ``"<s> "`` the lineage prepends,
because BOS is a real id here (``encode_batch(..., bos=True)``).

``train_sentencepiece`` trains a byte-fallback BPE model in memory (any string encodes, no unk), deterministically,
so the demo world gets a small vocabulary (≈ 400-512 pieces) instead of LLaMA's 32000. ``CORPORA`` names the
instruction sets a small tokenizer can be trained on (``config.text.corpus``): the demo world's, or Meta-World's
(every phrasing of every task in data/metaworld/tasks.py, robot and video tasks alike: a tokenizer, like LLaMA's, is
not the pretraining under test).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from data.demo import tasks

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "You are a helpful assistant. USER: What action should the robot take to `{task}` ASSISTANT:"
MARKERS: tuple[str, ...] = (
    "<vision>",
    "</vision>",
    "<dynamics>",
    "</dynamics>",
    "<action>",
    "</action>",
    "<delta>",
    "</delta>",
    "<proprio>",
    "</proprio>",
)
MEMO_SIZE = 100_000
_NUM_SPECIAL = 3 + 256  # unk, bos, eos + byte-fallback pieces


def format_prompt(task: str, template: str = PROMPT_TEMPLATE, suffix: str = " <vision>") -> str:
    """The instruction prompt: ``template`` with ``{task}`` filled, then ``suffix`` (the opening vision marker)."""
    return template.format(task=task) + suffix


class TextTokenizer:
    """Thin wrapper over ``sentencepiece.SentencePieceProcessor`` with batched, memoized, left-padded encoding."""

    def __init__(self, model_proto: bytes) -> None:
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self._memo: dict[str, tuple[int, ...]] = {}
        self._warned_lengths: set[int] = set()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load a ``.model`` file (serialized ModelProto)."""
        with open(path, "rb") as f:
            return cls(f.read())

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> TextTokenizer:
        """Load a serialized ModelProto (e.g. from checkpoint assets)."""
        return cls(model_proto)

    @property
    def model_bytes(self) -> bytes:
        """Serialized ModelProto, to store next to a checkpoint."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    @property
    def pad_id(self) -> int:
        """The model's pad id if it defines one, else 0 (= unk, the LLaMA convention)."""
        pad = int(self._sp.pad_id())
        return pad if pad >= 0 else 0

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` without BOS/EOS (memoized)."""
        return list(self._encode_cached(text))

    def _encode_cached(self, text: str | bytes) -> tuple[int, ...]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        ids = self._memo.get(text)
        if ids is None:
            ids = tuple(self._sp.encode(text))
            if len(self._memo) >= MEMO_SIZE:  # bound the memo: instructions repeat, so a rare reset is cheap
                self._memo.clear()
            self._memo[text] = ids
        return ids

    def decode(self, ids: Iterable[int], *, skip_pad: bool = True) -> str:
        """Text of ``ids``; BOS/EOS decode to nothing and pad ids are dropped when ``skip_pad``.

        With byte fallback, ``encode`` never produces unk (= pad = 0), so dropping pads loses nothing.
        """
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if skip_pad:
            ids = [i for i in ids if i != self.pad_id]
        return self._sp.decode(ids)

    def encode_batch(
        self, texts: Sequence[str | bytes], length: int, *, bos: bool = True, left_pad: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode and pad a batch to a fixed length.

        Too-long texts are truncated from the LEFT (the end, with the task and markers, is kept); BOS, when
        requested, stays the first token. A warning is logged once per length.

        Args:
          texts: B strings (or UTF-8 bytes, as from tf.data).
          length: output length L.
          bos: prepend BOS.
          left_pad: pad on the left (generation-style prefixes) or on the right.
        Returns:
          ids int32[B, L] (pad id at padding), mask bool[B, L] (True at real tokens).
        """
        if length < 1 + int(bos):
            raise ValueError(f"length must be at least {1 + int(bos)}, got {length}")
        ids = np.full((len(texts), length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), length), bool)
        for row, text in enumerate(texts):
            toks = self._encode_cached(text)
            room = length - int(bos)
            if len(toks) > room:
                if length not in self._warned_lengths:
                    self._warned_lengths.add(length)
                    log.warning(
                        "text of %d tokens truncated from the left to length %d (further truncations to this "
                        "length are not reported)",
                        len(toks) + int(bos),
                        length,
                    )
                toks = toks[len(toks) - room :]
            seq = ([self.bos_id] if bos else []) + list(toks)
            n = len(seq)
            sl = slice(length - n, length) if left_pad else slice(0, n)
            ids[row, sl] = seq
            mask[row, sl] = True
        return ids, mask


def train_sentencepiece(
    sentences: Iterable[str], vocab_size: int = 512, extra: Sequence[str] = (), *, model_type: str = "bpe"
) -> bytes:
    """Train a SentencePiece model in memory and return its serialized ModelProto.

    unk 0, bos 1, eos 2, no pad piece (pad = 0 by convention), byte fallback (any string encodes), identity
    normalization (exact round trip), single thread (deterministic: same input gives the same bytes).
    ``vocab_size`` is a soft limit (``hard_vocab_limit=False``) so tiny corpora work. ``extra`` strings (markers,
    prompt template) are appended to the corpus as plain text, not special symbols.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"unknown model_type {model_type!r}: expected 'bpe' or 'unigram'")
    if vocab_size <= _NUM_SPECIAL:
        raise ValueError(f"vocab_size must exceed {_NUM_SPECIAL} (3 specials + 256 byte pieces), got {vocab_size}")
    corpus = [s for s in list(sentences) + list(extra) if s]
    if not corpus:
        raise ValueError("train_sentencepiece needs at least one non-empty sentence")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=out,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def demo_instructions() -> list[str]:
    """Every instruction the demo world can produce (all families × phrasings × colours × regions), sorted."""
    out: set[str] = set()
    for family, templates in tasks.TEMPLATES.items():
        for template in templates:
            for a in tasks.COLORS:
                if family == "push_to_region":
                    out.update(template.format(a=a, region=region) for region in tasks.REGIONS)
                elif family == "push_direction":
                    out.update(template.format(a=a, direction=d) for d in tasks.DIRECTIONS)
                elif family == "touch_block":
                    out.add(template.format(a=a))
                else:
                    out.update(template.format(a=a, b=b) for b in tasks.COLORS if b != a)
    return sorted(out)


def metaworld_instructions() -> list[str]:
    """Every phrasing of every Meta-World task of data/metaworld/tasks.py, sorted."""
    from data.metaworld import tasks as mw_tasks  # pure Python (no MuJoCo)

    return sorted({p for t in mw_tasks.TASKS.values() for p in t.phrasings})


CORPORA = {"demo": demo_instructions, "metaworld": metaworld_instructions}  # config.text.corpus


def demo_corpus(corpus: str = "demo") -> list[str]:
    """Training corpus of a small tokenizer: the instructions of ``corpus`` (CORPORA), full prompts, and the markers
    in sequence order."""
    if corpus not in CORPORA:
        from core.errors import unknown

        raise ValueError(unknown("text corpus", corpus, CORPORA))
    instructions = CORPORA[corpus]()
    return [*instructions, *(format_prompt(i) for i in instructions), " ".join(MARKERS), *MARKERS]


def train_demo_tokenizer(out_path: str, vocab_size: int = 512, corpus: str = "demo") -> str:
    """Train a small tokenizer on ``corpus`` (CORPORA: "demo", "metaworld") and write it atomically to ``out_path``
    (a ``.model`` file); returns the path."""
    proto = train_sentencepiece(demo_corpus(corpus), vocab_size=vocab_size, extra=(PROMPT_TEMPLATE,))
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_spm_", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out_path
