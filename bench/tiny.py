"""The benchmarks' model: the embedded tiny Qwen2, SFT-trained briefly so completions look like the task's."""

from __future__ import annotations

import tempfile
from pathlib import Path


def sft_tiny_model(shape=None, steps: int = 200):
    """(model directory, tokenizer, (prompt ids, completion ids) examples, model) for `shape`
    (a TinyModelSection; default the embedded one), after `steps` SFT steps on the arithmetic task."""
    import torch

    from configs.schema import ArithSection, TinyModelSection
    from tasks import tiny_model
    from tasks.algos import arith
    from tasks.sft import sft

    tok = tiny_model.build_tokenizer()
    a = ArithSection()
    problems = arith.generate(2000, a.min_terms, a.max_terms, a.max_operand, seed=a.seed)
    examples = [
        (tok(p.question + "\n")["input_ids"], tok(p.solution)["input_ids"] + [tok.eos_token_id]) for p in problems
    ]
    model = tiny_model.build_model(shape or TinyModelSection(), len(tok), seed=0)
    # The annealed schedule these benchmarks were first measured with; throughput does not depend on it.
    sft(
        model,
        examples,
        steps=steps,
        batch_size=64,
        lr=3e-3,
        min_lr_ratio=0.05,
        seed=0,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
    )
    model_dir = Path(tempfile.mkdtemp()) / "model"
    tiny_model.save(model, tok, model_dir)
    return model_dir, tok, examples, model
