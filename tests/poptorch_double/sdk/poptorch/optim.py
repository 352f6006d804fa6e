"""Double of `poptorch.optim` (test double; see the package docstring).

The constructors take PopTorch 3.x's keyword arguments and record them. `step()` raises, because
on IPUs the optimizer step runs on the device inside the compiled program.
"""

from __future__ import annotations

import torch

from ._record import RECORD


class VariableAttributes:
    """Which optimizer attributes may change between `setOptimizer` calls (PopTorch's `variable_attrs`)."""

    def __init__(self, names):
        self._constant: set[str] = set()
        self._names = set(names)

    def markAsConstant(self, name: str) -> None:
        if name not in self._names:
            raise ValueError(f"unknown optimizer attribute {name!r}; known: {sorted(self._names)}")
        self._constant.add(name)

    def markAsVariable(self, name: str) -> None:
        self._constant.discard(name)

    def isConstant(self, name: str) -> bool:
        return name in self._constant


class _DeviceStepMixin:
    def step(self, closure=None):
        raise RuntimeError("the PopTorch double does not train: on IPUs the optimizer step runs on the device")


class LAMB(_DeviceStepMixin, torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, bias_correction=True,
                 loss_scaling=None, max_weight_norm=None, accum_type=None, first_order_momentum_accum_type=None,
                 second_order_momentum_accum_type=None, use_combined_accum=None):
        arguments = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                         loss_scaling=loss_scaling, max_weight_norm=max_weight_norm, accum_type=accum_type,
                         first_order_momentum_accum_type=first_order_momentum_accum_type,
                         second_order_momentum_accum_type=second_order_momentum_accum_type,
                         use_combined_accum=use_combined_accum)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_weight_norm=max_weight_norm)
        super().__init__(params, defaults)
        self.loss_scaling = loss_scaling
        self.variable_attrs = VariableAttributes(["lr", "betas", "eps", "weight_decay", "max_weight_norm",
                                                  "loss_scaling"])
        RECORD.optimizers.append(("LAMB", {**arguments, "param_groups": self.param_groups}))


class AdamW(_DeviceStepMixin, torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 bias_correction=True, loss_scaling=None, accum_type=None, first_order_momentum_accum_type=None,
                 second_order_momentum_accum_type=None, max_grad_norm=None):
        arguments = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         bias_correction=bias_correction, loss_scaling=loss_scaling, accum_type=accum_type,
                         first_order_momentum_accum_type=first_order_momentum_accum_type,
                         second_order_momentum_accum_type=second_order_momentum_accum_type,
                         max_grad_norm=max_grad_norm)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self.loss_scaling = loss_scaling
        self.variable_attrs = VariableAttributes(["lr", "betas", "eps", "weight_decay", "loss_scaling"])
        RECORD.optimizers.append(("AdamW", {**arguments, "param_groups": self.param_groups}))
