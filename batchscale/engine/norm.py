"""Per-worker ("ghost") batch norm: statistics over groups of G samples, as B/G workers would.

In training mode with `group_size` G < N, the batch is cut into k = N/G consecutive groups; each is
normalized with its own mean and (biased) variance. The running statistics receive the same k
moving-average updates, group 0 first, that k sequential forward passes of ordinary batch norm
(the study's Algorithm 1) would apply; `ghost` does them in closed form:

    r_k = (1 - m)^k r_0 + sum_i m (1 - m)^(k-1-i) s_i,   s_i = statistic of group i.

With G = N, or in eval mode, this is exactly nn.BatchNorm2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, group_size: int = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size  # 0: the whole batch is one group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.group_size
        if not self.training or group <= 0 or group >= x.shape[0]:
            return super().forward(x)
        if x.shape[0] % group:
            raise ValueError(f"batch of {x.shape[0]} is not a multiple of group {group}")
        return self._ghost_forward(x, group)

    def _ghost_forward(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """One batch_norm call for all k groups: group i's channel c becomes channel i*C + c of a
        (G, k*C, H, W) tensor (one copy in, one out, in x's memory layout). Its running buffers,
        fresh with momentum 1, come back holding each group's mean and unbiased variance exactly
        as k separate calls compute them; those feed the closed-form update."""
        n, c, h, w = x.shape
        k = n // group
        dtype = torch.promote_types(x.dtype, torch.float32)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        xs = x.to(dtype)
        if channels_last:  # memory (k, G, H, W, C) -> (G, H, W, k, C)
            grouped = (xs.permute(0, 2, 3, 1).reshape(k, group, h, w, c).permute(1, 2, 3, 0, 4)
                       .reshape(group, h, w, k * c).permute(0, 3, 1, 2))
        else:  # memory (k, G, C, H, W) -> (G, k, C, H, W)
            grouped = xs.reshape(k, group, c, h, w).transpose(0, 1).reshape(group, k * c, h, w)
        track = self.track_running_stats
        means = torch.zeros(k * c, dtype=dtype, device=x.device) if track else None
        variances = torch.ones(k * c, dtype=dtype, device=x.device) if track else None
        weight = self.weight.repeat(k) if self.affine else None
        bias = self.bias.repeat(k) if self.affine else None
        y = F.batch_norm(grouped, means, variances, weight, bias, True, 1.0, self.eps)
        if channels_last:
            y = (y.permute(0, 2, 3, 1).reshape(group, h, w, k, c).permute(3, 0, 1, 2, 4)
                 .reshape(n, h, w, c).permute(0, 3, 1, 2))
        else:
            y = y.reshape(group, k, c, h, w).transpose(0, 1).reshape(n, c, h, w)
        if track:
            self._update_running(means.view(k, c), variances.view(k, c))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, means: torch.Tensor, unbiased_vars: torch.Tensor) -> None:
        """Apply k sequential moving-average updates in closed form."""
        k = means.shape[0]
        m = self.momentum
        powers = torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        weights = (m * (1 - m) ** powers)[:, None]
        keep = (1 - m) ** k
        self.running_mean.mul_(keep).add_((weights * means).sum(0).to(self.running_mean.dtype))
        self.running_var.mul_(keep).add_(
            (weights * unbiased_vars).sum(0).to(self.running_var.dtype))
        self.num_batches_tracked.add_(k)


def set_group_size(model: nn.Module, group_size: int) -> None:
    """Set the batch-norm group of every GhostBatchNorm2d in `model` (0 = whole batch)."""
    for module in model.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.group_size = group_size
