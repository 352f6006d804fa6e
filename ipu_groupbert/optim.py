"""Optimizers (LAMB, LAMB without bias correction, AdamW) and learning-rate schedules.

Parameter groups follow Graphcore's BERT recipes: weight decay only on tensors with two or more
dimensions (matmul, convolution and embedding weights), and none on biases and LayerNorm
parameters, which also take the plain Adam update instead of LAMB's trust-ratio scaling.

Schedule convention: `scheduler.step()` is called once after each optimizer step, so the learning
rate used by step t (t = 0 .. training_steps - 1, counting completed steps before it) is
`learning_rate x multiplier(t)`, and `scheduler.last_epoch` equals the number of completed steps.
A run resumed after k steps (optimizer and scheduler state dicts loaded into freshly built
objects) uses multiplier(k) next, exactly as an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from .config import RunConfig, TrainingConfig
from .config import warmup_steps as count_warmup_steps

__all__ = [
    "Lamb",
    "ParameterSplit",
    "ScheduleMultiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "build_param_groups",
    "clip_grad_norm",
    "learning_rates",
    "schedule_multiplier",
    "split_parameters",
]


# ---------------------------------------------------------------------------------------------
# LAMB


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with a layer-wise trust ratio (You et al. 2019, "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes").

    Per parameter tensor w with gradient g at step t (1-based):

        m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t)              v_hat = v / (1 - beta2^t)   (bias_correction only)
        u = m_hat / (sqrt(v_hat) + eps) + weight_decay w
        w = w - lr r u,   r = ||w|| / ||u||    (r = 1 when either norm is 0, or trust_ratio is off)

    `bias_correction` and `trust_ratio` can be set per parameter group; build_optimizer turns the
    trust ratio off for 1-D tensors. State for fp16 and bf16 parameters is kept in fp32.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        trust_ratio: bool = True,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"invalid learning rate {lr}: it must be > 0")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if not eps > 0.0:
            raise ValueError(f"invalid epsilon {eps}: it must be > 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight decay {weight_decay}: it must be >= 0")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, trust_ratio=trust_ratio,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients; use dense embeddings (sparse=False)")
                self._update_parameter(param, group, beta1, beta2)
        return loss

    def _update_parameter(self, param: torch.Tensor, group: dict, beta1: float, beta2: float) -> None:
        state = self.state[param]
        # Low-precision parameters get fp32 moments and an fp32 update, cast back at the end.
        compute_dtype = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, dtype=compute_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=compute_dtype, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]

        grad = param.grad.to(compute_dtype)
        weight = param.to(compute_dtype)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        if group["bias_correction"]:
            first_moment = exp_avg / (1.0 - beta1**step)
            second_moment = exp_avg_sq / (1.0 - beta2**step)
        else:
            first_moment, second_moment = exp_avg, exp_avg_sq
        update = first_moment / (second_moment.sqrt() + group["eps"])
        if group["weight_decay"] != 0.0:
            update.add_(weight, alpha=group["weight_decay"])

        if group["trust_ratio"]:
            weight_norm = torch.linalg.vector_norm(weight)
            update_norm = torch.linalg.vector_norm(update)
            ratio = torch.where(
                (weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, torch.ones_like(weight_norm)
            )
            update.mul_(ratio)
        new_weight = weight - group["lr"] * update
        param.copy_(new_weight.to(param.dtype))


# ---------------------------------------------------------------------------------------------
# Parameter groups


@dataclass
class ParameterSplit:
    """Trainable parameters by treatment, each as (name, parameter) in model order.

    decay: tensors with two or more dimensions (weight decay, LAMB trust ratio).
    no_decay: biases, LayerNorm parameters and other 1-D or scalar tensors (neither).
    """

    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]


def split_parameters(model: nn.Module) -> ParameterSplit:
    """Split the trainable parameters of `model`; a tied parameter appears once, under its first name."""
    decay, no_decay = [], []
    # named_parameters() skips a parameter object it has already yielded, so tied weights (the
    # MLM decoder sharing the word embeddings) are optimized once.
    for name, param in model.named_parameters(remove_duplicate=True):
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append((name, param))
    return ParameterSplit(decay=decay, no_decay=no_decay)


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Return torch parameter groups: decayed tensors with the LAMB trust ratio, then the rest without.

    Each group carries `param_names` (saved in the optimizer state dict) and `trust_ratio`, which
    Lamb reads and AdamW ignores. Empty groups are left out.
    """
    split = split_parameters(model)
    groups = []
    if split.decay:
        groups.append({
            "params": [p for _, p in split.decay], "param_names": [n for n, _ in split.decay],
            "weight_decay": weight_decay, "trust_ratio": True,
        })
    if split.no_decay:
        groups.append({
            "params": [p for _, p in split.no_decay], "param_names": [n for n, _ in split.no_decay],
            "weight_decay": 0.0, "trust_ratio": False,
        })
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return groups


def build_optimizer(model: nn.Module, training: Union[TrainingConfig, RunConfig]) -> torch.optim.Optimizer:
    """Return the optimizer that `training.optimizer` names, over the parameter groups above."""
    if isinstance(training, RunConfig):
        training = training.training
    groups = build_param_groups(model, training.weight_decay)
    betas = (training.adam_beta1, training.adam_beta2)
    if training.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=training.learning_rate, betas=betas, eps=training.adam_epsilon)
    if training.optimizer in ("LAMB", "LAMBNoBiasCorrection"):
        return Lamb(
            groups, lr=training.learning_rate, betas=betas, eps=training.adam_epsilon,
            bias_correction=training.optimizer == "LAMB",
        )
    raise ValueError(
        f"unknown optimizer {training.optimizer!r}; training.optimizer must be LAMB, LAMBNoBiasCorrection or AdamW"
    )


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: Optional[float]) -> torch.Tensor:
    """Return the global L2 norm of the optimizer's gradients, and clip them to `max_norm` if set.

    With `max_norm` None the norm is only measured (for logging). A non-finite norm (an fp16
    overflow) is returned without touching the gradients, so the caller can skip the step.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_norm is not None and torch.isfinite(total_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
    return total_norm


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules


class ScheduleMultiplier:
    """Learning-rate multiplier of step t (0-based), a callable object so LambdaLR saves its settings.

    Warm-up (t < warmup_steps): (t / warmup_steps)^warmup_exponent, so step 0 uses 0 as in
    transformers' warm-up schedules; the exponent is 1 for `linear` and `constant`.
    After warm-up, with progress p = (t - warmup_steps) / (total_steps - warmup_steps):
      linear, power_warmup_linear: 1 - p;  polynomial: (1 - p)^decay_power;  constant: 1.
    The multiplier reaches 0 only at t = total_steps, one past the last step.
    """

    SCHEDULES = ("linear", "power_warmup_linear", "polynomial", "constant")

    def __init__(
        self, schedule: str, total_steps: int, warmup_steps: int,
        warmup_exponent: float = 1.0, decay_power: float = 1.0,
    ) -> None:
        if schedule not in self.SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; use one of {', '.join(self.SCHEDULES)}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        # Plain Python numbers only: they go into the scheduler's state dict, which checkpoints
        # load with torch.load(weights_only=True).
        self.schedule = schedule
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_exponent = float(warmup_exponent if schedule in ("power_warmup_linear", "polynomial") else 1.0)
        self.decay_power = float(decay_power if schedule == "polynomial" else 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step / self.warmup_steps) ** self.warmup_exponent
        if self.schedule == "constant":
            return 1.0
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps == 0:
            return 1.0 if step < self.total_steps else 0.0
        remaining = max(0.0, 1.0 - (step - self.warmup_steps) / decay_steps)
        return remaining**self.decay_power

    def __repr__(self) -> str:
        return (
            f"ScheduleMultiplier({self.schedule!r}, total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, warmup_exponent={self.warmup_exponent}, "
            f"decay_power={self.decay_power})"
        )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, training: Union[TrainingConfig, RunConfig], total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the schedule `training.lr_schedule` names over `total_steps` optimizer steps.

    warmup_steps = lr_warmup x total_steps, rounded half up. Call `step()` once after each optimizer step;
    the module docstring describes which learning rate each step uses and how resuming works.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_multiplier(training, total_steps))


def schedule_multiplier(training: Union[TrainingConfig, RunConfig], total_steps: int) -> ScheduleMultiplier:
    """Return the learning-rate multiplier of the configured schedule over `total_steps` steps."""
    if isinstance(training, RunConfig):
        training = training.training
    return ScheduleMultiplier(
        training.lr_schedule, total_steps, count_warmup_steps(training, total_steps),
        warmup_exponent=training.lr_warmup_exponent, decay_power=training.lr_decay_power,
    )


def learning_rates(training: Union[TrainingConfig, RunConfig], total_steps: int) -> list[float]:
    """Return the learning rate of every step 0 .. total_steps - 1 (for plots and checks)."""
    multiplier = schedule_multiplier(training, total_steps)
    peak = training.training.learning_rate if isinstance(training, RunConfig) else training.learning_rate
    return [peak * multiplier(t) for t in range(total_steps)]
