"""SentencePiece wrapper (latent_pretraining.model.text_tokenizer): training, round trip, batching, demo prompts."""

import logging

import numpy as np
import pytest

from latent_pretraining.model import text_tokenizer as tt


@pytest.fixture(scope="module")
def demo_proto() -> bytes:
    return tt.train_sentencepiece(tt.demo_corpus(), vocab_size=512, extra=(tt.PROMPT_TEMPLATE,))


@pytest.fixture(scope="module")
def tok(demo_proto: bytes) -> tt.TextTokenizer:
    return tt.TextTokenizer.from_bytes(demo_proto)


def test_special_ids(tok: tt.TextTokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 512


def test_training_is_deterministic(demo_proto: bytes) -> None:
    again = tt.train_sentencepiece(tt.demo_corpus(), vocab_size=512, extra=(tt.PROMPT_TEMPLATE,))
    assert again == demo_proto
    small = tt.train_sentencepiece(["push the red block"] * 3, vocab_size=300, model_type="unigram")
    assert small == tt.train_sentencepiece(["push the red block"] * 3, vocab_size=300, model_type="unigram")
    with pytest.raises(ValueError, match="vocab_size"):
        tt.train_sentencepiece(["a"], vocab_size=100)


def test_round_trip(tok: tt.TextTokenizer) -> None:
    for text in [*tt.demo_instructions()[:20], tt.format_prompt("push the red block to the centre"), "  two  spaces"]:
        ids = tok.encode(text)
        assert tok.bos_id not in ids and tok.eos_id not in ids
        assert tok.decode(ids) == text
    assert tok.encode(b"push the red block") == tok.encode("push the red block")


def test_byte_fallback_on_unseen_characters(tok: tt.TextTokenizer) -> None:
    text = "Zürich → 机器人 🤖 #42"
    ids = tok.encode(text)
    assert 0 not in ids  # no unk
    assert tok.decode(ids) == text


def test_markers_are_plain_text(tok: tt.TextTokenizer) -> None:
    ids = tok.encode("<vision>")
    assert len(ids) >= 1 and all(i > 2 for i in ids)
    assert tok.decode(ids) == "<vision>"


def test_encode_batch_padding_and_truncation(tok: tt.TextTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    short, long = "push the red block", tt.format_prompt("push the red block to the centre")
    n_short, n_long = len(tok.encode(short)), len(tok.encode(long))
    length = n_short + 4
    assert n_long + 1 > length
    with caplog.at_level(logging.WARNING):
        ids, mask = tok.encode_batch([short, long.encode()], length)
        tok.encode_batch([long], length)
    assert ids.shape == mask.shape == (2, length) and ids.dtype == np.int32 and mask.dtype == bool
    # left padding: pads (id 0, mask False) first, then BOS and the text
    assert mask[0].tolist() == [False] * 3 + [True] * (n_short + 1)
    assert ids[0, :3].tolist() == [tok.pad_id] * 3
    assert ids[0, 3:].tolist() == [tok.bos_id, *tok.encode(short)]
    # left truncation keeps BOS and the END of the text
    assert mask[1].all()
    assert ids[1].tolist() == [tok.bos_id, *tok.encode(long)[-(length - 1) :]]
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and str(length) in warnings[0].getMessage()
    # right padding, no BOS
    ids_r, mask_r = tok.encode_batch([short], length, bos=False, left_pad=False)
    assert ids_r[0, :n_short].tolist() == tok.encode(short) and mask_r[0].sum() == n_short
    assert not mask_r[0, n_short:].any() and (ids_r[0, n_short:] == tok.pad_id).all()
    assert tok.decode(ids[0]) == short  # pads and BOS decode to nothing


def test_demo_prompts_fit(tok: tt.TextTokenizer) -> None:
    instructions = tt.demo_instructions()
    # phrasings x colours (x regions / other colours / directions): push_to_region, next_to + separate, touch_block,
    # push_direction
    assert len(instructions) == len(set(instructions)) == 4 * 4 * 9 + 2 * 4 * 4 * 3 + 4 * 4 + 4 * 4 * 4
    assert "push the red block to the top left corner" in instructions
    assert {"touch the red block", "nudge the yellow block to the left", "push the blue block up"} <= set(instructions)
    lengths = [len(tok.encode(tt.format_prompt(i))) + 1 for i in instructions]  # + BOS
    print(f"demo prompt tokens (with BOS): max {max(lengths)}, mean {np.mean(lengths):.1f}")
    assert max(lengths) <= 64


def test_file_and_bytes_agree(tmp_path, demo_proto: bytes) -> None:
    path = tt.train_demo_tokenizer(str(tmp_path / "sub" / "demo.model"))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["demo.model"]  # no leftover temp file
    from_file = tt.TextTokenizer.from_file(path)
    assert from_file.model_bytes == demo_proto
    from_bytes = tt.TextTokenizer.from_bytes(from_file.model_bytes)
    text = tt.format_prompt("separate the blue and yellow blocks")
    assert from_file.encode(text) == from_bytes.encode(text)
    assert from_file.vocab_size == from_bytes.vocab_size


def test_metaworld_corpus_fits_its_prompts(tmp_path, tok: tt.TextTokenizer) -> None:
    """config.text.corpus="metaworld": every Meta-World phrasing, as a prompt, fits the demo presets' prompt_len 40
    (with the demo-world tokenizer's byte fallback the longest took 44 with BOS); an unknown corpus is one line."""
    from data.metaworld import tasks as mw_tasks

    instructions = tt.metaworld_instructions()
    assert len(instructions) == sum(len(t.phrasings) for t in mw_tasks.TASKS.values())
    mw = tt.TextTokenizer.from_file(tt.train_demo_tokenizer(str(tmp_path / "mw.model"), corpus="metaworld"))
    own = max(len(mw.encode(tt.format_prompt(i))) + 1 for i in instructions)  # + BOS
    demo = max(len(tok.encode(tt.format_prompt(i))) + 1 for i in instructions)
    assert own <= 40 < demo, (own, demo)
    with pytest.raises(ValueError, match="unknown text corpus 'meta_world'"):
        tt.demo_corpus("meta_world")
