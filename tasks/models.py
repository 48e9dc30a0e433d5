"""Where model weights come from: the embedded tiny model, a local directory, or a hub id."""
from __future__ import annotations

from pathlib import Path

from configs.schema import Config


def resolve_model_dir(name_or_path: str) -> Path:
    """A local directory holding the model. Hub ids resolve through the Hugging Face cache/network."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model.name_or_path={name_or_path!r}: directory has no config.json")
        return p.resolve()
    if p.exists():
        raise ValueError(f"model.name_or_path={name_or_path!r}: expected a model directory or a hub id")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                "*.jinja"]))


def engine_dtype(cfg: Config) -> str:
    from tasks.trainer import resolve_device, resolve_dtype

    dt = resolve_dtype(cfg.model.dtype, resolve_device(cfg.run.device))
    return "bfloat16" if str(dt) == "torch.bfloat16" else "float32"
