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
        """One optimiser step, vectorised over the parameters of each group.

        The norms, trust ratios and momentum updates of all parameters go
        through ``torch._foreach_*`` kernels (a few launches per group, not a
        few per parameter), and trust ratios stay on the device.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            matrices = [i for i, p in enumerate(params) if p.ndim > 1]
            if matrices:
                weights = [params[i] for i in matrices]
                scaled = torch._foreach_add([updates[i] for i in matrices], weights,
                                            alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(weights))  # (n_matrices,)
                u_norm = torch.stack(torch._foreach_norm(scaled))  # (n_matrices,)
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0),
                    group["eta"] * w_norm / u_norm, torch.ones_like(w_norm),
                )
                torch._foreach_mul_(scaled, list(trust.unbind()))
                for i, update in zip(matrices, scaled):
                    updates[i] = update
            buffers, fresh = [], []
            for p, update in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                    fresh.append(state["momentum_buffer"])
                else:
                    buffers.append((state["momentum_buffer"], update))
            if buffers:
                old, new = [b for b, _ in buffers], [u for _, u in buffers]
                torch._foreach_mul_(old, group["momentum"])
                torch._foreach_add_(old, new)
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params],
                                alpha=-group["lr"])
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
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    extra = {} if name == "adamw" else {"momentum": 0.9}
    return cls(groups, lr=lr, **extra, **_vectorised(params))


def _vectorised(params):
    """Keyword arguments for torch's fastest implementation on ``params``' device.

    CUDA: the fused kernels (one launch for every parameter). Elsewhere the
    ``foreach`` implementation, which torch only picks by itself on GPUs: on
    the CPU it applies the same element-wise operations, list by list, instead
    of a Python loop of small ones per parameter.
    """
    if not params:
        return {}
    devices = {p.device.type for p in params}
    floating = all(p.is_floating_point() for p in params)
    if devices == {"cuda"} and floating:
        return {"fused": True}
    if devices == {"cpu"}:
        return {"foreach": True}
    return {}


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
