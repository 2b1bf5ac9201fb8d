"""Data parallelism through accelerate: one Accelerator per run, sharded parameters refused,
and the same masks on every process. See docs/distributed.md."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast
from torch import nn

from sparseadapter.config import SparsityConfig
from sparseadapter.errors import ConfigError
from sparseadapter.runconfig import RunConfig
from sparseadapter.sparsify import apply_masks, get_masks

SHARDED = {
    DistributedType.FSDP: "FSDP",
    DistributedType.DEEPSPEED: "DeepSpeed",
    DistributedType.MEGATRON_LM: "Megatron-LM",
}


def make_accelerator(config: RunConfig, logging_dir: Path | None = None) -> Accelerator:
    """A fresh Accelerator for this run (runs in one process may differ in precision), with the
    run's trackers (``train.report_to``) writing to ``logging_dir`` (none without one).

    Under ``torchrun`` on a machine without GPUs accelerate finds no backend and would let every
    process train alone; then the processes are joined over gloo on the CPU instead.
    """

    def fresh(cpu: bool) -> Accelerator:
        _forget_accelerator_state(process_state=cpu)
        trackers = config.train.trackers if logging_dir is not None else []
        return Accelerator(
            cpu=cpu,
            mixed_precision=config.train.mixed_precision,
            gradient_accumulation_steps=config.train.grad_accum,
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(logging_dir.parent), logging_dir=str(logging_dir)
            )
            if trackers
            else None,
        )

    accelerator = fresh(cpu=False)
    if accelerator.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        accelerator = fresh(cpu=True)
    check_parallelism(accelerator)
    if config.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 on CPU")
    return accelerator


def _forget_accelerator_state(process_state: bool) -> None:
    """Drop the state accelerate shares between all Accelerators of a process (precision,
    accumulation; with ``process_state`` also the device and process group it chose), so the next
    Accelerator is configured afresh. accelerate (1.16) has no public API for this: its own tests
    call these private ``_reset_state`` methods, so this function is their one caller here."""
    AcceleratorState._reset_state(reset_partial_state=process_state)
    GradientState._reset_state()


def check_parallelism(accelerator: Accelerator) -> None:
    """Refuse parallelism that shards or wraps parameters: the masks would silently stop working.

    Masks are tied to the parameter tensors of the model; FSDP and DeepSpeed ZeRO-3 replace
    them with flat shards, and DeepSpeed/Megatron-LM step their own optimizers. Data parallel
    (DDP) on CPUs or GPUs is supported.
    """
    name = SHARDED.get(accelerator.distributed_type)
    if name is not None:
        raise ConfigError(
            f"{name} is not supported yet: it shards or wraps the parameters, so the pruning "
            "masks would not be enforced. Train data parallel instead (accelerate launch "
            "--multi_gpu, or torchrun); see docs/distributed.md"
        )


def broadcast_masks(model: nn.Module, config: SparsityConfig, accelerator: Accelerator) -> None:
    """Make every process use the main process's masks (scores may differ in the last bit)."""
    if accelerator.num_processes == 1:
        return
    masks = {
        name: broadcast(mask.to(accelerator.device, torch.uint8)).bool()
        for name, mask in get_masks(model).items()
    }
    apply_masks(model, masks, config)
