"""Tokenizer loading and prompt rendering, shared by data prep and every stage that needs ids."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from configs.schema import DataSection, ModelSection


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """'tiny' builds the embedded character tokenizer; anything else is a hub id or local directory, loaded
    with `AutoTokenizer` as any user would. Every stage gets its tokenizer here, set up once: it always has a
    pad token (`with_pad_token`)."""
    if name_or_path == "tiny":
        from tasks.tiny_model import build_tokenizer

        return with_pad_token(build_tokenizer(), name_or_path)
    from tasks.local_paths import check_model_dir

    check_model_dir(name_or_path)  # an empty directory: name what is missing, not transformers' guess
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if _plain_character_vocab(Path(name_or_path)):
        # Run directories written before the byte-level tiny tokenizer (tasks/tiny_model.build_tokenizer):
        # AutoTokenizer reads them as Qwen2Tokenizer, whose byte-level pre-tokenizer drops every space and
        # newline. Only these load with the generic class.
        return with_pad_token(PreTrainedTokenizerFast.from_pretrained(name_or_path), name_or_path)
    return with_pad_token(AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False), name_or_path)


def _plain_character_vocab(path: Path) -> bool:
    """Is `path` a model directory whose tokenizer.json is segflow's old character tokenizer (a vocabulary
    with a bare " " token and no pre-tokenizer)? Hub ids and other tokenizers answer False."""
    try:
        spec = json.loads((path / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    model = spec.get("model") or {}
    return spec.get("pre_tokenizer") is None and " " in (model.get("vocab") or {})


def with_pad_token(tok, name_or_path: str):
    """`tok`, padding with EOS when it has no pad token (Llama and some base-model releases ship none),
    as TRL and transformers' generate do. Training batches are right-padded and every pad position is
    masked out (tasks/trainer.pack), so which id pads changes no log-prob."""
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(
                f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token; add a pad_token "
                "to its tokenizer_config.json"
            )
        tok.pad_token = tok.eos_token
    return tok


def render_prompt(question: str, data: DataSection, tokenizer) -> str:
    text = data.prompt_template.format(question=question)
    if data.use_chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def encode_prompt(text: str, data: DataSection, tokenizer) -> list[int]:
    # A chat template already contains its special tokens; a plain prompt gets the tokenizer's defaults
    # (e.g. BOS for Llama-family tokenizers), the same ids at sampling and training time.
    return list(tokenizer(text, add_special_tokens=not data.use_chat_template)["input_ids"])


def model_tokenizer(model: ModelSection):
    return load_tokenizer(model.name_or_path)
