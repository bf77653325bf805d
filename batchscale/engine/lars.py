"""Layer-wise adaptive optimizers for large batches: LARS (You et al. 2017) and LAMB (You et al.
2019).

Both give every weight tensor ("layer") its own step size from the ratio of the norm of its
weights to the norm of its update, so that no layer moves by much more than a set fraction of its
own size however large the global rate grows. Groups whose `adapt` is False (batch-norm scales
and shifts, biases — the `bn_and_bias` group of `batchscale.engine.optim`) are excluded from that
adaptation and from weight decay, as is customary: they take a plain momentum-SGD step (LARS) or
a plain Adam step (LAMB).

LARS is You, Gitman & Ginsburg 2017 ("Large batch training of convolutional networks"),
Algorithm 1, for a tensor w with gradient g, weight decay β, trust coefficient η, momentum m and
the step's global rate γ_t (warmup, decay):

    λ = η·‖w‖ / (‖g‖ + β·‖w‖)               (1 where ‖w‖ is 0; 0/0 where β = 0 and g = 0)
    v ← m·v + γ_t·λ·(g + β·w)
    w ← w − v

The rate sits inside the momentum buffer, as in the paper and in TensorFlow's LARSOptimizer used
by the MLPerf ResNet-50 references: a change of γ_t acts on the new gradient only, while the
buffer keeps the rates it was built with (torch.optim.SGD's form, v ← m·v + d; w ← w − γ_t·v,
would rescale the whole buffer at once). A zero gradient with decay keeps the paper's ratio η/β
(the step is continuous as ‖g‖ → 0); a zero weight takes ratio 1, as TensorFlow's, since the
paper's 0 would leave a zero-initialised tensor at zero forever. Excluded groups take the same
momentum step with λ = 1 and no decay. docs/recipes.md says why this form.

LAMB, with Adam's moments and bias correction at step t (1-based):

    m = β1·m + (1 − β1)·g        v = β2·v + (1 − β2)·g²
    u = (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε) + wd·w
    trust = ‖w‖ / ‖u‖                       (1 where ‖w‖ or ‖u‖ is 0)
    w = w − lr·trust·u

Norms are kept as tensors (no host synchronisation per layer).
"""

from __future__ import annotations

import torch


def trust_ratio(numerator: torch.Tensor, denominator: torch.Tensor,
                weight_norm: torch.Tensor) -> torch.Tensor:
    """numerator / denominator; 1 where the weight norm or the denominator is zero (a zero
    denominator with a nonzero weight means a zero update: any ratio gives the same step)."""
    usable = (weight_norm > 0) & (denominator > 0)
    safe = torch.where(usable, denominator, torch.ones_like(denominator))
    return torch.where(usable, numerator / safe, torch.ones_like(numerator))


class LARS(torch.optim.Optimizer):
    """Momentum SGD with the rate inside the buffer (You et al. 2017, Algorithm 1) and a
    layer-wise trust ratio on groups whose `adapt` is True."""

    # momentum buffers written before the rate moved inside them (a checkpoint of an older
    # batchscale) held Σ m^k·λ·d; loading one multiplies it by the group's saved rate
    BUFFER_HOLDS_LR = "buffer_holds_lr"

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, adapt: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: lr, momentum, weight_decay >= 0 and trust_coefficient > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad + wd * p if wd else p.grad.clone()
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    update.mul_(trust_ratio(group["trust_coefficient"] * w_norm,
                                            g_norm + wd * w_norm, w_norm))
                update.mul_(lr)
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update
                        state[self.BUFFER_HOLDS_LR] = True
                    else:
                        update = state["momentum_buffer"].mul_(momentum).add_(update)
                p.sub_(update)
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "momentum_buffer" in state and not state.get(self.BUFFER_HOLDS_LR):
                    state["momentum_buffer"].mul_(group["lr"])  # exact if the rate was constant
                    state[self.BUFFER_HOLDS_LR] = True


class LAMB(torch.optim.Optimizer):
    """Adam with bias correction and a layer-wise trust ratio on groups whose `adapt` is True."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, adapt: bool = True):
        if lr < 0 or weight_decay < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("LAMB: lr, eps, weight_decay >= 0 and betas in [0, 1)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denominator = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                update = (state["exp_avg"] / (1 - beta1 ** t)).div_(denominator)
                if wd:
                    update.add_(p, alpha=wd)
                if group["adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    update.mul_(trust_ratio(w_norm, u_norm, w_norm))
                p.add_(update, alpha=-group["lr"])
        return loss


def layerwise_groups(groups: list[dict]) -> list[dict]:
    """The groups of `optim.parameter_groups`, with `bn_and_bias` excluded from adaptation and
    weight decay and `weights` adapted."""
    return [{**g, "adapt": g["name"] != "bn_and_bias",
             **({"weight_decay": 0.0} if g["name"] == "bn_and_bias" else {})} for g in groups]


def build_lars(cfg, groups):
    return LARS(layerwise_groups(groups), lr=cfg.peak_lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, trust_coefficient=cfg.trust_coefficient)


def build_lamb(cfg, groups):
    return LAMB(layerwise_groups(groups), lr=cfg.peak_lr, betas=(cfg.lamb_beta1, cfg.lamb_beta2),
                eps=cfg.lamb_eps, weight_decay=cfg.weight_decay)
