"""Optimisers and learning-rate schedules for CueCo training.

LARS is written here because neither torch nor torchvision ships it; it is
the standard optimiser for large-batch self-supervised training.
"""

import math

import torch

# base learning rates at batch size 256, scaled linearly with the batch size
BASE_LR = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (LARS).

    Parameters with more than one dimension get their update scaled by the
    trust ratio ``eta * ||w|| / ||g + wd * w||``; biases and normalisation
    weights (one dimension) get plain SGD without weight decay, as is usual.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups.
    lr : float
        Learning rate.
    momentum : float, default=0.9
    weight_decay : float, default=0.0
    eta : float, default=0.02
        Trust coefficient.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    # stays on the device: no host sync for the ratio
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0),
                        group["eta"] * w_norm / u_norm, torch.ones_like(w_norm),
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def make_optimizer(name, parameters, *, lr, weight_decay):
    """Optimiser over ``parameters`` with no weight decay on 1-D tensors.

    Parameters
    ----------
    name : {"sgd", "lars", "adamw"}
    parameters : iterable of torch.nn.Parameter
    lr : float
    weight_decay : float

    Returns
    -------
    optimizer : torch.optim.Optimizer
    """
    params = [p for p in parameters if p.requires_grad]
    # biases and normalisation weights are the 1-D tensors
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def warmup_cosine(optimizer, total_steps, warmup_steps):
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    total_steps : int
    warmup_steps : int

    Returns
    -------
    scheduler : torch.optim.lr_scheduler.LambdaLR
        Stepped once per optimiser step.
    """
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
