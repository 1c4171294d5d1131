"""SGD with momentum, the notebook's optimiser, in a handful of operations per step.

`torch.optim.SGD(foreach=True)` spends most of a step at batch 4 in Python (parameter groups, grouping by
device, dynamo guards: 250-400 us of a 1-1.5 ms step here), and building it imports torch._dynamo
(seconds before the first step). `MomentumSGD` does the same arithmetic in the same order:

    first step:  buf = grad                      (torch: grad.detach().clone())
    later steps: buf = buf * momentum + grad     (torch: _foreach_mul_, then _foreach_add_ with alpha 1)
    every step:  param = param + (-lr) * buf     (torch: _foreach_add_(params, bufs, alpha=-lr))

with the momentum buffers as views of one flat tensor, so the multiplication is one kernel over all of
them. Element-wise kernels give each element the same float whatever the tensor around it, so the
weights are bit-for-bit those of torch's SGD (tests/model/test_optimizer.py compares them step by step).
Its `state_dict` has torch's SGD format, so checkpoints of either load into the other.
"""

from __future__ import annotations

import torch
from torch import nn


class MomentumSGD:
    """torch.optim.SGD(params, lr, momentum, foreach=True) without dampening, weight decay or nesterov.

    Every parameter that requires a gradient must have one at each step (true of a model whose every
    parameter takes part in the loss, as here).
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float) -> None:
        if lr < 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid SGD settings: lr {lr}, momentum {momentum}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameter to train")
        self.lr, self.momentum = lr, momentum
        first = self.params[0]
        self._flat_buffer = torch.zeros(sum(p.numel() for p in self.params), dtype=first.dtype, device=first.device)
        self._buffers = []
        offset = 0
        for p in self.params:
            if p.dtype != first.dtype or p.device != first.device or not _dense(p):
                raise ValueError("MomentumSGD needs dense parameters of one dtype on one device")
            # Same shape and strides as the parameter (channels-last included), so a copy is element for element.
            self._buffers.append(self._flat_buffer.as_strided(p.shape, p.stride(), offset))
            offset += p.numel()
        self._has_buffers = False  # torch creates the buffers at the first step, from the gradients

    def zero_grad(self) -> None:
        """Drop the gradients (torch's `zero_grad(set_to_none=True)`): backward then writes fresh ones."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if any(grad is None for grad in grads):
            raise RuntimeError("MomentumSGD.step: a parameter has no gradient (was backward() called?)")
        if self.momentum == 0:
            torch._foreach_add_(self.params, grads, alpha=-self.lr)
            return
        if self._has_buffers:
            self._flat_buffer.mul_(self.momentum)
            torch._foreach_add_(self._buffers, grads)
        else:
            torch._foreach_copy_(self._buffers, grads)
            self._has_buffers = True
        torch._foreach_add_(self.params, self._buffers, alpha=-self.lr)

    def state_dict(self) -> dict:
        """torch.optim.SGD's format: {"state": {index: {"momentum_buffer": tensor}}, "param_groups": [...]}."""
        state = {}
        if self._has_buffers and self.momentum != 0:
            state = {index: {"momentum_buffer": buffer.clone()} for index, buffer in enumerate(self._buffers)}
        group = {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": 0,
            "weight_decay": 0,
            "nesterov": False,
            "maximize": False,
            "foreach": True,
            "differentiable": False,
            "fused": None,
            "params": list(range(len(self.params))),
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what `state_dict` (or torch.optim.SGD's) wrote for the same parameters."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or list(groups[0]["params"]) != list(range(len(self.params))):
            raise ValueError("the optimiser state is for other parameters than this model's")
        group = groups[0]
        unsupported = {key: group.get(key) for key in ("dampening", "weight_decay", "nesterov", "maximize")}
        if any(unsupported.values()):
            raise ValueError(f"the optimiser state uses SGD settings MomentumSGD does not have: {unsupported}")
        buffers = [state_dict["state"].get(index, {}).get("momentum_buffer") for index in range(len(self.params))]
        if any(buffer is not None for buffer in buffers):
            if any(buffer is None or buffer.shape != p.shape for buffer, p in zip(buffers, self.params)):
                raise ValueError("the optimiser state's momentum buffers do not fit this model's parameters")
            with torch.no_grad():
                for own, saved in zip(self._buffers, buffers):
                    own.copy_(saved)
        self._has_buffers = all(buffer is not None for buffer in buffers)
        self.lr, self.momentum = group["lr"], group["momentum"]


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the tensor's elements fill its memory without gaps or overlaps, in some dimension order."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True
