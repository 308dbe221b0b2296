"""Data-parallel training on PyTorch's own engine: torch.distributed through Hugging Face Accelerate.

The training loops (`components.kit.training.train`, `components.causal_lm.train.fit`) build a `DataParallel` from the
`distributed` section of params.yaml. In one process nothing is distributed: the model trains on CUDA
when torch sees a GPU (bf16 where the GPU supports it), else on the CPU in fp32, exactly as a plain
PyTorch loop would. Launched as several processes (`miniaturize stage finetune --processes 4`, `torchrun`
or `accelerate launch`: each sets RANK and WORLD_SIZE), every process holds a replica of the model
wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPUs), takes its share of every global batch
and the gradients are all-reduced. The global batch, the number of optimizer steps and the learning
rate schedule are those of one process, so N processes give the same model up to floating-point
summation order and dropout masks, N times faster at best.

For the stage components: `is_main_process()` (only rank 0 writes files and logs),
`wait_for_everyone()` and `same_on_every_rank(value)` (rank 0's value, broadcast).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from components.config import DistributedConfig
from components.kit.processes import (
    is_main_process as is_main_process,  # re-exported for the stages
    rank as rank,
    world_size,
)


def resolve_device(setting: str) -> str:
    """'auto' is CUDA when torch sees a GPU, else the CPU."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "distributed.device is cuda, but torch sees no CUDA device (a CPU build of torch, or "
            "no GPU visible to this process); use device: auto or cpu"
        )
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_mixed_precision(setting: str, device: str) -> str:
    """'auto' is bf16 on a GPU that supports it (Ampere and later), else full fp32 ('no')."""
    if setting != "auto":
        return setting
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"


def process_state(cfg: DistributedConfig):
    """Accelerate's per-process state; under a multi-process launch, creating it joins the process group
    (NCCL on GPUs, gloo on CPUs)."""
    from accelerate import PartialState

    return PartialState(cpu=resolve_device(cfg.device) == "cpu")


def wait_for_everyone() -> None:
    """A barrier across the launch's processes; nothing in a single process."""
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave() -> None:
    """Leave the process group at the end of a launched process (torch warns about one left open)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def same_on_every_rank(value):
    """Rank 0's value on every rank (any picklable object), so that decisions taken from it (early stopping,
    which heads to prune) cannot diverge between processes."""
    if world_size() == 1 or not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def micro_batches(index: np.ndarray, rank_: int, world: int, accum: int) -> list[np.ndarray]:
    """This process's share of one global batch, cut into `accum` micro-batches.

    Rows are dealt out round-robin (rank r takes rows r, r + world, ...): a global batch is sorted by length
    inside its bucket, so each process gets short and long sentences alike. A share may be empty (a last
    batch smaller than the world); the caller still runs it, at weight zero, so every process joins every
    gradient all-reduce.
    """
    return np.array_split(index[rank_::world], accum)


class DataParallel:
    """One training run's Accelerator and the arithmetic that keeps N processes equal to one.

    Each micro-batch's mean loss is multiplied by `weight(part, whole)` = part * world / whole, where part and
    whole count what the loss averages over (rows, or tokens for a language model) in the micro-batch and in
    the global batch. DDP averages gradients over the world, so the sum is the gradient of the global batch's
    mean loss: the same optimizer step as one process taking the whole batch. In one process with no
    accumulation the weight is exactly 1.
    """

    def __init__(self, cfg: DistributedConfig):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.cfg = cfg
        device = resolve_device(cfg.device)
        precision = resolve_mixed_precision(cfg.mixed_precision, device)
        if (
            world_size() == 1
            and AcceleratorState._shared_state
            and (
                AcceleratorState._shared_state.get("_mixed_precision") != precision
                or AcceleratorState._shared_state.get("device", torch.device(device)).type != device
            )
        ):
            # Accelerate keeps one device and precision per process; a single process that trains under
            # several settings (a test session, a notebook) starts afresh. A launched process never changes.
            AcceleratorState._reset_state(reset_partial_state=True)
        process_state(cfg)
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
        self.device = self.accelerator.device
        self.precision = precision
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """The model on the device (DDP-wrapped across processes) and the optimizer, as the loop uses them."""
        if self.cfg.gradient_checkpointing:
            # Non-reentrant checkpointing works under DDP and restores the RNG, so dropout masks are unchanged.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return self.accelerator.prepare(model, optimizer)

    def micro_batches(self, index: np.ndarray) -> list[np.ndarray]:
        return micro_batches(index, self.rank, self.world, self.cfg.grad_accum_steps)

    def weight(self, part: float, whole: float) -> float:
        return part * self.world / whole

    def syncing(self, model: nn.Module, last: bool):
        """No gradient all-reduce until the last micro-batch of a step."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def average_gradients(self, params) -> None:
        """All-reduce (mean) gradients of parameters outside the DDP-wrapped model (a distillation projection)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def total(self, *values: float) -> list[float]:
        """Sums over all processes (the epoch's loss and row counts); the values themselves in one process."""
        if self.world == 1:
            return list(values)
        summed = self.accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=self.device), "sum")
        return summed.tolist()

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def finish(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The plain model (no DDP wrapper, no autocast hook, checkpointing off) back on `device`."""
        raw = self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        if self.cfg.gradient_checkpointing:
            raw.gradient_checkpointing_disable()
        self.accelerator.free_memory()
        return raw.to(device)


def cpu_state(model: nn.Module) -> OrderedDict:
    """A copy of the model's weights in CPU memory (the best epoch, kept aside off the GPU)."""
    state = model.state_dict()
    copy = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    copy._metadata = getattr(state, "_metadata", None)  # load_state_dict reads per-module versions from it
    return copy
