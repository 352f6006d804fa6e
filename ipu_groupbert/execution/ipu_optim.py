"""PopTorch's LAMB and AdamW, with the parameter groups of the host optimizers.

The groups match `ipu_groupbert.optim.build_param_groups`: tensors with two or more dimensions get
weight decay and (for LAMB) the trust ratio; biases and LayerNorm parameters get neither. PopART's
LAMB computes the trust ratio as min(||w||, max_weight_norm) / ||update|| and uses 1 when either
norm is 0, so `max_weight_norm: 0` in a group turns the trust ratio off for that group.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from ..config import TrainingConfig
from ..optim import split_parameters


def build_ipu_optimizer(model: nn.Module, training: TrainingConfig, poptorch: ModuleType) -> torch.optim.Optimizer:
    """Return the `poptorch.optim` optimizer that `training.optimizer` names, over the model's parameter groups."""
    split = split_parameters(model)
    decay = [parameter for _, parameter in split.decay]
    no_decay = [parameter for _, parameter in split.no_decay]
    half = training.precision == "fp16"
    common = dict(
        lr=training.learning_rate,
        betas=(training.adam_beta1, training.adam_beta2),
        eps=training.adam_epsilon,
        weight_decay=0.0,  # each group sets its own
        # The loss is multiplied by this before the backward pass and the gradients divided by it in
        # the optimizer, so small fp16 gradients do not underflow. Automatic loss scaling starts here.
        loss_scaling=training.loss_scaling if half else 1.0,
        # fp16 gradient accumulators halve their memory; the moments stay fp32 for precision.
        accum_type=torch.float16 if half else torch.float32,
        first_order_momentum_accum_type=torch.float32,
        second_order_momentum_accum_type=torch.float32,
    )

    if training.optimizer == "AdamW":
        groups = _groups(decay, no_decay, training.weight_decay, {})
        arguments = dict(common, bias_correction=True)
        if training.max_grad_norm is not None:
            arguments["max_grad_norm"] = training.max_grad_norm
        optimizer = poptorch.optim.AdamW(groups, **arguments)
    elif training.optimizer in ("LAMB", "LAMBNoBiasCorrection"):
        if training.max_grad_norm is not None:
            raise NotImplementedError(
                f"training.max_grad_norm {training.max_grad_norm} with LAMB is not supported on IPUs (PopTorch's LAMB "
                f"has no global gradient clipping); set max_grad_norm: null, as LAMB's trust ratio bounds each "
                f"update, or use AdamW"
            )
        groups = _groups(decay, no_decay, training.weight_decay, {"max_weight_norm": 0.0})
        optimizer = poptorch.optim.LAMB(
            groups, bias_correction=training.optimizer == "LAMB", max_weight_norm=None, **common
        )
        # Fixed for the whole run, so PopTorch compiles it in instead of streaming it each step.
        optimizer.variable_attrs.markAsConstant("max_weight_norm")
    else:
        raise ValueError(
            f"unknown optimizer {training.optimizer!r}; training.optimizer must be LAMB, LAMBNoBiasCorrection or AdamW"
        )
    optimizer.variable_attrs.markAsConstant("weight_decay")

    # The step runs on the IPU, never through optimizer.step(), so mark the optimizer as stepped:
    # otherwise torch's LR scheduler warns that scheduler.step() comes before optimizer.step().
    optimizer._step_count = 1
    optimizer._opt_called = True
    return optimizer


def _groups(decay: list, no_decay: list, weight_decay: float, no_decay_extra: dict) -> list[dict]:
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **no_decay_extra})
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return groups
