"""The host training step (CPU and CUDA): accumulation, data parallelism, precision and loss scaling.

One optimizer step consumes a window of micro-batches: `gradient_accumulation x replication_factor`
per process (a single process reproduces its replicas by accumulating their micro-batches), and
under torchrun one window per process. Losses are normalised over the whole window across all
processes, so the gradient is the same however the global batch is split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .runtime import DistributedContext

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class TrainingStopped(RuntimeError):
    """The run cannot continue, for example after a non-finite loss. The message gives the cause and the fix."""


class TrainingTask(Protocol):
    """Interface of a training task (pre-training or question answering) to the trainer."""

    def normalisers(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        """Count what the loss is averaged over (for example labelled tokens) in this process's window."""

    def loss(self, model, batch: Batch, normalisers: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Return the micro-batch's share of the window loss and its statistics (sums and counts)."""


@dataclass
class LossScaler:
    """Loss scaling for fp16: skip a step whose gradients overflow and halve the scale, down to `minimum`.

    With `dynamic`, the scale also doubles after `growth_interval` steps in a row without overflow.
    """

    scale: float
    minimum: float
    dynamic: bool
    growth_interval: int = 2000
    good_steps: int = 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale = max(self.scale / 2, self.minimum)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.dynamic and self.good_steps >= self.growth_interval:
            self.scale *= 2
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])


@dataclass
class StepResult:
    """Statistics of one optimizer step, summed over all processes."""

    sums: dict[str, float] = field(default_factory=dict)
    grad_norm: float | None = None
    skipped: bool = False
    loss_scale: float | None = None


def check_host_precision(precision: str, device: torch.device) -> None:
    """Raise NotImplementedError for a precision the host backend does not run on `device`."""
    if precision == "fp16" and device.type != "cuda":
        raise NotImplementedError(
            "training.precision fp16 needs a CUDA device on the host backend (CPUs have no fast fp16 "
            "matmuls); use bf16 or fp32 on CPU"
        )


class HostTrainer:
    """Run optimizer steps of `task` on a CPU or CUDA device, alone or under torch.distributed."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        task: TrainingTask,
        *,
        device: torch.device,
        context: DistributedContext,
        precision: str,
        max_grad_norm: float | None,
        loss_scaling: float,
        auto_loss_scaling: bool,
        min_loss_scale: float,
        max_nonfinite_steps: int,
        compile_model: bool = False,
    ):
        check_host_precision(precision, device)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.task = task
        self.device = device
        self.context = context
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.scaler = (
            LossScaler(scale=loss_scaling, minimum=min_loss_scale, dynamic=auto_loss_scaling)
            if precision == "fp16" else None
        )
        self.parameters = [p for p in model.parameters() if p.requires_grad]

        self.forward_model = model
        if context.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=device_ids)
        if compile_model:
            self.forward_model = torch.compile(self.forward_model)

    # ----- one optimizer step ------------------------------------------------------------------

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        """Accumulate gradients over `micro_batches`, then clip and step unless the gradients are not finite."""
        self.model.train()
        micro_batches = [self._to_device(batch) for batch in micro_batches]
        normalisers = self._all_reduce(self.task.normalisers(micro_batches))
        # DistributedDataParallel averages gradients over processes, while the window loss is
        # already normalised by the global counts, so each process scales its part back up.
        loss_multiplier = float(self.context.world_size)
        if self.scaler is not None:
            loss_multiplier *= self.scaler.scale

        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        for index, batch in enumerate(micro_batches):
            is_last = index == len(micro_batches) - 1
            with self._sync_context(is_last), self._autocast():
                loss, statistics = self.task.loss(self.forward_model, batch, normalisers)
            (loss * loss_multiplier).backward()
            for key, value in statistics.items():
                sums[key] = sums[key] + value.detach().float()
        reduced = {key: value.item() for key, value in self._all_reduce(dict(sums)).items()}

        if self.scaler is not None:
            for parameter in self.parameters:
                if parameter.grad is not None:
                    parameter.grad.div_(self.scaler.scale)
        grad_norm = self._clip_gradients()
        finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in reduced.values())
        result = StepResult(sums=reduced, grad_norm=grad_norm, skipped=not finite,
                            loss_scale=self.scaler.scale if self.scaler else None)

        if finite:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            self._handle_nonfinite(step, reduced)
        if self.scaler is not None:
            self.scaler.update(finite)
        with warnings.catch_warnings():
            # A skipped step still advances the schedule, so the schedule stays tied to the step count;
            # PyTorch warns about exactly that order.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        return result

    def _handle_nonfinite(self, step: int, sums: dict[str, float]) -> None:
        self.nonfinite_in_a_row += 1
        if self.scaler is None:
            raise TrainingStopped(
                f"non-finite loss or gradients at step {step + 1} in {self.precision} "
                f"(statistics: {sums}); lower training.learning_rate, set training.max_grad_norm, or check "
                f"the data. The last checkpoint and the weights before this step are kept."
            )
        logger.warning(
            "Skipped step %d: non-finite fp16 gradients; loss scale %.4g -> %.4g (%d in a row)",
            step + 1, self.scaler.scale, max(self.scaler.scale / 2, self.scaler.minimum), self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise TrainingStopped(
                f"{self.nonfinite_in_a_row} steps in a row had non-finite fp16 gradients (up to step {step + 1}, "
                f"loss scale {self.scaler.scale:.4g}); lower training.loss_scaling or training.learning_rate, "
                f"use training.precision bf16, or raise training.max_nonfinite_steps"
            )

    def _clip_gradients(self) -> float:
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        else:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return float(norm)

    # ----- helpers ------------------------------------------------------------------------------

    def _to_device(self, batch: Batch) -> Batch:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def _sync_context(self, is_last: bool):
        if isinstance(self.forward_model, DistributedDataParallel) and not is_last:
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _all_reduce(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.context.enabled or not values:
            return values
        keys = sorted(values)
        stacked = torch.stack([values[key].to(self.device, torch.float64) for key in keys])
        dist.all_reduce(stacked)
        return {key: stacked[index] for index, key in enumerate(keys)}

    @torch.no_grad()
    def evaluate(self, batches, statistics: Callable[[torch.nn.Module, Batch], dict]) -> dict[str, float]:
        """Sum `statistics(model, batch)` over `batches` in eval mode, across all processes."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        for batch in batches:
            with self._autocast():
                for key, value in statistics(self.model, self._to_device(batch)).items():
                    sums[key] = sums[key] + value.float()
        return {key: value.item() for key, value in self._all_reduce(dict(sums)).items()}

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss_scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("loss_scaler") is not None:
            self.scaler.load_state_dict(state["loss_scaler"])
