"""Model directories shaped like hub checkpoints, for tests of config drift and tied embeddings.

QWEN_CONFIG is Qwen2.5-0.5B's config.json as the hub serves it (written by transformers 4.43). A
`small_hub_model` keeps every field of it except the shapes, ties the embeddings like the real model, and
is written the way a transformers-4 hub snapshot is: weights in safetensors, config.json verbatim in the
old spelling. `resave` loads a directory and saves it the way segflow saves checkpoints (transformers 5:
new spelling).
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN_CONFIG = Path(__file__).resolve().parent / "fixtures" / "qwen2.5-0.5b" / "config.json"


def small_hub_model(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tasks import tiny_model

    tok = tiny_model.build_tokenizer()
    fields = {
        **json.loads(QWEN_CONFIG.read_text()),
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": len(tok),
        "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in fields.items() if k != "transformers_version"}))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in Qwen2.5-0.5B/1.5B
    tiny_model.save(model, tok, out)
    (out / "config.json").write_text(json.dumps(fields, indent=2))  # the hub's transformers-4 spelling
    return out


def resave(src: Path, out: Path, noise: float = 0.0, seed: int = 0) -> Path:
    """`src` loaded by transformers and saved again as segflow saves a checkpoint (model.save_pretrained +
    tokenizer), its weights moved by N(0, noise^2) each so the engine's output changes."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.tokens import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if noise:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(src)).save_pretrained(out)
    return out
