"""Every model directory segflow writes opens with plain Hugging Face Auto classes (issue 31, item 10).

AutoTokenizer builds a Qwen2Tokenizer for model_type qwen2 whatever tokenizer_class says; with the old
plain-character vocabulary it dropped every space and newline ('3+5-2->3+5=88-2=6####6').
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from configs.schema import TinyModelSection
from tasks import tiny_model
from tasks.checkpoints import write_checkpoint
from tasks.tokens import load_tokenizer

TEXT = "3+5-2 -> 3+5=8\n8-2=6\n#### 6"


def _tiny_dir(path):
    tok = tiny_model.build_tokenizer()
    tiny_model.save(tiny_model.build_model(TinyModelSection(), len(tok), seed=0), tok, path)
    return path


def _assert_opens_like_any_user(path, expected_ids):
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == expected_ids
    assert tok.decode(ids) == TEXT
    assert (tok.eos_token, tok.pad_token, len(tok)) == (
        tiny_model.EOS,
        tiny_model.PAD,
        len(tiny_model.build_tokenizer()),
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    assert model.get_input_embeddings().num_embeddings == len(tok)
    with torch.no_grad():
        assert model(torch.tensor([ids])).logits.shape == (1, len(ids), len(tok))


def _char_ids():
    """One id per character of TEXT, in the vocabulary's order: 3 specials, then tiny_model.CHARS."""
    return [3 + tiny_model.CHARS.index(c) for c in TEXT]


def test_tiny_model_dir_round_trips_through_auto_classes(tmp_path):
    _assert_opens_like_any_user(_tiny_dir(tmp_path / "tiny"), _char_ids())


def test_checkpoint_round_trips_through_auto_classes(tmp_path):
    start = _tiny_dir(tmp_path / "warm_start")
    tok = load_tokenizer(str(start))  # the trainer's path: the start model's own tokenizer
    model = AutoModelForCausalLM.from_pretrained(start)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    out = tmp_path / "checkpoints" / "0001"
    out.mkdir(parents=True)
    write_checkpoint(
        out, model, None, tok, opt, sched, consecutive_skips=0, dtype=torch.float32, gradient_checkpointing=False
    )
    _assert_opens_like_any_user(out, _char_ids())


def test_tiny_vocabulary_is_spelt_as_the_byte_level_pre_tokenizer_spells_it():
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert [tiny_model.byte_level(c) for c in tiny_model.CHARS] == [
        byte_level.pre_tokenize_str(c)[0][0] for c in tiny_model.CHARS
    ]


def test_segflow_loads_through_auto_tokenizer(tmp_path):
    tok = load_tokenizer(str(_tiny_dir(tmp_path / "tiny")))
    assert type(tok) is type(AutoTokenizer.from_pretrained(tmp_path / "tiny"))
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT


def test_old_plain_character_tokenizer_dir_still_loads(tmp_path):
    """A run directory from before the byte-level vocabulary: its tokenizer.json maps ' ' and '\\n' as
    themselves with no pre-tokenizer. segflow still reads it exactly, with the same ids as today."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {tiny_model.PAD: 0, tiny_model.EOS: 1, tiny_model.UNK: 2}
    for c in tiny_model.CHARS:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=tiny_model.UNK))
    core.decoder = decoders.Fuse()
    old = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=tiny_model.EOS, pad_token=tiny_model.PAD, unk_token=tiny_model.UNK
    )
    path = tmp_path / "old"
    tiny_model.save(tiny_model.build_model(TinyModelSection(), len(old), seed=0), old, path)
    assert json.loads((path / "tokenizer.json").read_text())["pre_tokenizer"] is None
    tok = load_tokenizer(str(path))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == _char_ids()
    assert tok.decode(ids) == TEXT


@pytest.mark.parametrize("text", ["a b", "x\ny", "  two  spaces ", "<eos>"])
def test_built_and_loaded_tiny_tokenizers_agree(tmp_path, text):
    built = tiny_model.build_tokenizer()
    loaded = AutoTokenizer.from_pretrained(_tiny_dir(tmp_path / "tiny"))
    assert built(text)["input_ids"] == loaded(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text


def test_characters_outside_the_tiny_vocabulary_drop_in_both_tokenizers(tmp_path):
    """Qwen2Tokenizer (what AutoTokenizer builds) has no unk token and drops them; the built one matches."""
    built = tiny_model.build_tokenizer()
    loaded = AutoTokenizer.from_pretrained(_tiny_dir(tmp_path / "tiny"))
    for tok in (built, loaded):
        assert tok.decode(tok("Janet\u2019s caf\u00e9", add_special_tokens=False)["input_ids"]) == "Janets caf"
