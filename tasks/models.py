"""Where model weights come from: the embedded tiny model, a local directory, or a hub id."""

from __future__ import annotations

from pathlib import Path

from configs.schema import Config


def resolve_model_dir(name_or_path: str) -> Path:
    """A local directory holding a complete model. Hub ids resolve through the Hugging Face cache/network."""
    from tasks.local_paths import check_model_dir

    p = Path(name_or_path).expanduser()
    if check_model_dir(name_or_path) is not None:
        check_checkpoint(p)
        return p.resolve()
    if p.exists():
        raise ValueError(f"model.name_or_path={name_or_path!r}: expected a model directory or a hub id")
    from huggingface_hub import snapshot_download

    d = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    check_checkpoint(d)
    return d


def check_checkpoint(d: Path) -> None:
    """Fail with the file and the problem when a model directory is incomplete or inconsistent: no
    safetensors weights, a shard its index lists but that is missing, a truncated safetensors file, or a
    tokenizer with more tokens than the model's embedding has rows."""
    import json

    from safetensors import safe_open

    index = d / "model.safetensors.index.json"
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else sorted(f.name for f in d.glob("*.safetensors"))
    )
    if not shards:
        bins = sorted(f.name for f in d.glob("*.bin"))
        raise FileNotFoundError(
            f"{d}: no *.safetensors weights"
            + (f" (found {bins}; segflow loads safetensors only, never pickled .bin files)" if bins else "")
        )
    for name in shards:
        f = d / name
        if not f.exists():
            raise FileNotFoundError(f"{d}: incomplete checkpoint, {index.name} lists {name} but it is missing")
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # noqa: BLE001 - any header error means a truncated or foreign file
            raise ValueError(f"{f}: unreadable safetensors file ({e}); the checkpoint is partial or corrupt") from e
    vocab = json.loads((d / "config.json").read_text()).get("vocab_size")
    if vocab and ((d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists()):
        from tasks.tokens import load_tokenizer

        n = len(load_tokenizer(str(d)))
        if n > vocab:
            raise ValueError(
                f"{d}: the tokenizer has {n} tokens but the model's vocab_size is {vocab}: "
                "tokenizer and model do not match"
            )


def engine_dtype(cfg: Config) -> str:
    return dtype_name(cfg.model.dtype, cfg.run.device)


def dtype_name(dtype: str = "auto", device: str = "auto") -> str:
    """The engine's dtype string for a model.dtype / run.device pair (the trainer's resolve_dtype rule)."""
    from tasks.trainer import resolve_device, resolve_dtype

    dt = resolve_dtype(dtype, resolve_device(device))
    return "bfloat16" if str(dt) == "torch.bfloat16" else "float32"
