"""Per-worker batch norm: the vectorized `ghost` pass equals the study's Algorithm 1 (`loop`)."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchscale.config import from_dict
from batchscale.engine.models import build_model
from batchscale.engine.norm import GhostBatchNorm2d
from batchscale.engine.step import forward_loss


def _setup(impl, model):
    cfg = from_dict(dict(batch_size=16, bn_group=4, bn_impl=impl))
    return SimpleNamespace(cfg=cfg, model=model, train_model=None)


def _pair():
    torch.manual_seed(0)
    ghost = build_model("resnet18", 4, group_size=4).double()
    loop = copy.deepcopy(ghost)
    for module in loop.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.group_size = 0  # the loop calls the model on each pseudo-batch of 4
    x = torch.randn(16, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    return ghost, loop, x, y


def test_ghost_and_loop_give_the_same_gradients_float64():
    ghost, loop, x, y = _pair()
    for impl, model in (("ghost", ghost), ("loop", loop)):
        loss, _ = forward_loss(_setup(impl, model), x, y)
        loss.backward()
    for (name, a), b in zip(ghost.named_parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12, msg=name)


def test_ghost_and_loop_give_the_same_running_statistics_and_step():
    ghost, loop, x, y = _pair()
    for impl, model in (("ghost", ghost), ("loop", loop)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss, _ = forward_loss(_setup(impl, model), x, y)
        loss.backward()
        optimizer.step()
    for (name, a), b in zip(ghost.state_dict().items(), loop.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12, msg=name)
    assert int(ghost.stem[1].num_batches_tracked) == 4  # one update per pseudo-batch


def test_loop_differs_from_whole_batch_bn():
    """The check above could pass trivially if grouping did nothing; it must not."""
    ghost, _, x, y = _pair()
    whole = copy.deepcopy(ghost)
    whole.stem[1].group_size = 0
    for module in whole.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.group_size = 0
    a, b = ghost(x), whole(x)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_closed_form_running_stats_equal_sequential_updates(momentum):
    torch.manual_seed(1)
    ghost = GhostBatchNorm2d(3, group_size=5, momentum=momentum).double()
    plain = nn.BatchNorm2d(3, momentum=momentum).double()
    ghost.running_mean.fill_(0.3), plain.running_mean.fill_(0.3)
    x = torch.randn(20, 3, 4, 4, dtype=torch.float64) * 2 + 1
    out = ghost(x)
    expected = torch.cat([plain(chunk) for chunk in x.split(5)])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ghost.running_mean, plain.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ghost.running_var, plain.running_var, rtol=1e-12, atol=1e-14)


def test_each_group_is_normalized_on_its_own():
    bn = GhostBatchNorm2d(2, group_size=4)
    x = torch.randn(12, 2, 3, 3) * torch.arange(1, 13.0).view(12, 1, 1, 1)
    y = bn(x).view(3, 4, 2, 9)
    torch.testing.assert_close(y.mean(dim=(1, 3)), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(1, 3), unbiased=False), torch.ones(3, 2), atol=1e-3,
                               rtol=0)


def test_eval_mode_and_whole_batch_group_are_plain_batch_norm():
    ghost, plain = GhostBatchNorm2d(3, group_size=8), nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5)
    torch.testing.assert_close(ghost(x), plain(x))
    ghost.eval(), plain.eval()
    torch.testing.assert_close(ghost(x), F.batch_norm(x, plain.running_mean, plain.running_var,
                                                      plain.weight, plain.bias, False))


def test_channels_last_input_gives_the_same_result():
    bn = GhostBatchNorm2d(4, group_size=2)
    x = torch.randn(8, 4, 5, 5)
    a = bn(x)
    b = bn(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)
