"""The trained policy on disk: load it for an iteration, write the next checkpoint. One path for the
single-process stage (tasks/train.py) and the torchrun job (tasks/distributed.py).

Imports torch, transformers, peft and safetensors only (no Prefect, DuckDB, vLLM or pydantic), so the
torchrun workers and bench/gpu_check.py load it without the orchestration stack.

Precision (tasks/trainer.py, "Mixed precision"): the trained parameters are float32 master weights,
whatever `model.dtype` is; the forward passes compute in the model dtype under autocast. A checkpoint
directory holds
  config.json, model.safetensors, tokenizer  the policy in the model dtype: what the engine and
                                             `from_pretrained` load (with LoRA: merged in float32, then cast)
  optimizer.pt                               AdamW state (float32), lr schedule, skipped-step streak
  master/                                    full fine-tuning with a model dtype other than float32: the
                                             float32 master (config.json + model.safetensors), what exact
                                             resume needs. The cast weights above round away every update
                                             below half a bf16 ulp, so resuming from them would differ.
  adapter/                                   LoRA: the trained float32 adapter, LoRA's master (the frozen
                                             base stays in the model dtype and reloads from the start policy)
With a float32 model dtype the top-level weights are the master and nothing else is written. Both
sub-directories sit below the checkpoint, where neither vLLM nor `from_pretrained` looks for weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the flow imports the file names below without it
    import torch

OPTIMIZER_FILE, ADAPTER_DIR, MASTER_DIR = "optimizer.pt", "adapter", "master"


def load_model(path: str | Path, dtype: torch.dtype, device: torch.device):
    """A causal LM from a model directory in `dtype` on `device`, in eval mode: safetensors only (never
    pickle) and no code from the model repository."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False
    ).to(device)
    model.eval()
    return model


def policy_device(run) -> torch.device:
    """The torch device of `run` (the RunSection: device, torch_threads), after setting torch's intra-op
    threads when `run.torch_threads` asks for a number."""
    import torch

    from tasks.trainer import resolve_device

    device = resolve_device(run.device)
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    return device


def load_policy(cfg, path: str | Path):
    """(model, tokenizer, device) for a checkpoint directory, on `cfg.run`'s device in `cfg.model.dtype`: a
    policy that is not trained (reference, SPO values, pi of a tree), so the model dtype, no master."""
    from tasks.tokens import load_tokenizer
    from tasks.trainer import resolve_dtype

    device = policy_device(cfg.run)
    return load_model(path, resolve_dtype(cfg.model.dtype, device), device), load_tokenizer(str(path)), device


def add_lora(train, model, adapter: Path | None):
    """Inject LoRA adapters (peft) into `model` in place, in float32 whatever the base's dtype; load trained
    adapter weights when given. `train` is the TrainSection (lora_rank, lora_alpha, lora_targets)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from tasks.trainer import MASTER_DTYPE

    lora = LoraConfig(
        r=train.lora_rank,
        lora_alpha=train.lora_alpha,
        target_modules=list(train.lora_targets),
        lora_dropout=0.0,
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    for p in peft_model.parameters():  # peft's autocast_adapter_dtype does this for bf16/fp16; make it explicit
        if p.requires_grad and p.dtype != MASTER_DTYPE:
            p.data = p.data.to(MASTER_DTYPE)
    if adapter is not None:
        set_peft_model_state_dict(peft_model, load_file(str(adapter / "adapter_model.safetensors")))
    return peft_model


def load_master(
    model_dir: str | Path, train, *, dtype: torch.dtype, device: torch.device, adapter_dir: Path | None = None
):
    """(model, peft model or None) to train: float32 master weights.

    Full fine-tuning: `model_dir`'s master/ when it has one, else its weights upcast (a start policy, or a
    float32 checkpoint). LoRA: `model_dir` is the start policy, loaded frozen in `dtype` (the model dtype),
    with the float32 adapter of `adapter_dir` (when it exists) on top.
    """
    from tasks.trainer import MASTER_DTYPE

    peft_model = None
    if train.lora_rank:
        model = load_model(model_dir, dtype, device)
        peft_model = add_lora(train, model, adapter_dir if adapter_dir is not None and adapter_dir.exists() else None)
    else:
        master = Path(model_dir) / MASTER_DIR
        model = load_model(master if master.is_dir() else model_dir, MASTER_DTYPE, device)
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, peft_model


def restore_optimizer(train, params: list, state_file: Path | None, device, total_steps: int):
    """(AdamW, lr schedule, skipped-step streak), continued from `state_file` when it exists (the first
    iteration starts fresh). AdamW's moments take the params' dtype: float32 with the master."""
    import torch

    from tasks.trainer import make_scheduler

    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    sched = make_scheduler(opt, train, total_steps=total_steps)
    if state_file is None or not Path(state_file).exists():
        return opt, sched, 0
    state = torch.load(state_file, map_location=device, weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return opt, sched, int(state.get("consecutive_skips", 0))


def merge_lora(peft_model):
    """The base model with the adapters merged in float32: every adapted layer (base weight and adapter)
    is upcast before peft computes W + B A * scale, so the model dtype rounds the sum once, when the
    result is cast (`save_model`). peft merges in the base's dtype: with a bf16 adapter it rounds the
    delta to bf16 and then the sum again. Consumes `peft_model`.

    A delta below half a bf16 ulp of its weight (~0.2% of it) is lost in bf16 weights however it is
    merged: the engine's bf16 copy lags the trainer's base + adapter until the adapter outgrows it."""
    from peft.tuners.lora import LoraLayer

    from tasks.trainer import MASTER_DTYPE

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.to(MASTER_DTYPE)
    return peft_model.merge_and_unload()


def cast_state(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`model`'s state dict in `dtype` (a copy where the dtype differs); tensors shared in the model
    (tied embeddings) stay shared, so `save_pretrained` still writes them once."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.storage_offset())
        if key not in cast:
            cast[key] = t.detach().to(dtype) if t.is_floating_point() else t.detach()
        out[name] = cast[key]
    return out


def save_model(model, out: Path, dtype: torch.dtype) -> None:
    """`model` as a Hugging Face directory whose weights and config.json `dtype` are `dtype`, leaving the
    model itself (the float32 master) as it was."""
    if all(t.dtype == dtype for t in model.state_dict().values() if t.is_floating_point()):
        model.save_pretrained(out, safe_serialization=True)  # nothing to cast (a float32 run): as saved before
        return
    before = model.config.dtype
    model.save_pretrained(out, state_dict=cast_state(model, dtype), safe_serialization=True)
    config = copy.deepcopy(model.config)
    config.dtype = dtype  # save_pretrained records the model's own dtype; from_pretrained users get `dtype`
    config.save_pretrained(out)
    model.config.dtype = before


def write_checkpoint(
    out: Path,
    model,
    peft_model,
    tok,
    opt,
    sched,
    *,
    consecutive_skips: int,
    dtype: torch.dtype,
    gradient_checkpointing: bool,
) -> None:
    """Write a checkpoint into the existing directory `out` (module docstring): optimizer state, the
    master (master/ or adapter/) and the policy in the model dtype `dtype`. With LoRA, `model` is
    consumed (the adapters are merged into it)."""
    import torch

    from tasks.trainer import MASTER_DTYPE

    torch.save(
        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "consecutive_skips": consecutive_skips},
        out / OPTIMIZER_FILE,
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    if peft_model is not None:
        peft_model.save_pretrained(out / ADAPTER_DIR)
        model = merge_lora(peft_model)
    elif dtype != MASTER_DTYPE:
        model.save_pretrained(out / MASTER_DIR, safe_serialization=True)
    save_model(model, out, dtype)
    tok.save_pretrained(out)
