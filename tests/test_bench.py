"""`batchscale bench`: the reference does the same work as the engine, and the command runs.

No timing is asserted here: timings are benchmarks (printed ratios), not tests.
"""

import json
import os
from types import SimpleNamespace

import numpy as np
import torch

from batchscale.bench import Reference, augment_one, to_tensor
from batchscale.cli import main
from batchscale.config import from_dict
from batchscale.engine.data import crop_flip, normalize
from batchscale.engine.optim import set_lr
from batchscale.engine.setup import build
from batchscale.engine.step import forward_loss, prepare_input, train_step

from conftest import tiny_config


def test_per_image_augmentation_equals_the_batched_crop_flip():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8, generator=generator)
    dy, dx = torch.randint(0, 9, (6,), generator=generator), torch.randint(0, 9, (6,),
                                                                          generator=generator)
    flip = torch.tensor([True, False, True, False, True, False])
    batched = crop_flip(images, dy, dx, flip)
    for b in range(6):
        one = augment_one(images[b].numpy(), int(dy[b]), int(dx[b]), bool(flip[b]))
        np.testing.assert_array_equal(one, batched[b].numpy())
        torch.testing.assert_close(to_tensor(one), normalize(batched[b:b + 1])[0])


def test_reference_and_engine_compute_the_same_loss_on_the_same_batch():
    cfg = tiny_config()
    setup = build(cfg, progress=False)
    reference = Reference(cfg, setup.device)  # same seed, so the same initial weights
    images = normalize(setup.train.images[:64])
    labels = setup.train.labels[:64]
    engine_loss, _ = forward_loss(setup, prepare_input(setup, images), labels)
    reference_loss = reference.loss(images.contiguous(), labels)
    torch.testing.assert_close(engine_loss, reference_loss, rtol=1e-4, atol=1e-5)


def test_reference_step_trains_the_same_model_class_and_optimizer():
    """Two steps of the textbook loop and two of the engine on the same batches, from the same
    initial weights: the same weights and momentum after them (float32 tolerance)."""
    cfg = tiny_config(bn_group=0, weight_decay=5e-4)
    setup = build(cfg, progress=False)
    reference = Reference(cfg, setup.device)
    assert type(reference.model) is type(setup.model)
    assert type(reference.optimizer) is type(setup.optimizer)
    for (name, a), b in zip(setup.model.state_dict().items(),
                            reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same seed: the same initial weights
    for step in range(2):
        batch = slice(64 * step, 64 * (step + 1))
        images = normalize(setup.train.images[batch]).contiguous()
        labels = setup.train.labels[batch]
        for optimizer in (setup.optimizer, reference.optimizer):
            set_lr(optimizer, 0.05 * (step + 1))
        train_step(setup, prepare_input(setup, images), labels)
        reference.step(images, labels)
    for (name, a), b in zip(setup.model.named_parameters(), reference.model.parameters(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(setup.optimizer.state[a]["momentum_buffer"],
                                   reference.optimizer.state[b]["momentum_buffer"], rtol=1e-4,
                                   atol=1e-5, msg=name)


def assert_ratio_of_rounded(ratio: float, num: float, den: float, part_step: float,
                            ratio_step: float) -> None:
    """`ratio` (the unrounded num/den rounded to `ratio_step`) agrees with the quotient of the
    parts as printed (each rounded to `part_step`) within what the roundings allow: a slow run's
    small rates make the parts' rounding the larger error (1.522 against 1.525 at ~30 img/s)."""
    q = num / den
    slack = q * (part_step / 2 / num + part_step / 2 / den) * 1.01 + ratio_step / 2 + 1e-9
    assert abs(ratio - q) <= slack, (ratio, q, slack)


def test_bench_command_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--what", "all", "--width", "4", "--train-subset", "128",
                 "--batch-size", "64", "--rounds", "2", "--threads", "2",
                 "--ghost-batch-size", "64", "--ghost-group", "16", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    provenance = results.pop("provenance")  # the file says where it came from
    assert results == json.loads(capsys.readouterr().out)
    assert {"command", "git_commit", "date", "machine", "torch"} <= set(provenance)
    assert provenance["cpu_count"] == os.cpu_count() and provenance["load_1m_at_end"] >= 0
    # each figure is what its parts say (to their rounding): 2 rounds, the first a warm-up;
    # 128 images / 64 a step
    train = results["train"]
    assert train["steps_per_epoch"] == 2 and train["first_round_is_warmup"] is True
    assert len(train["engine_per_epoch"]) == len(train["reference_per_epoch"]) == 2
    assert train["engine_images_per_sec"] == round(train["engine_per_epoch"][1], 1)
    assert train["reference_images_per_sec"] == train["reference_per_epoch"][1]
    assert_ratio_of_rounded(train["engine_over_reference"], train["engine_images_per_sec"],
                            train["reference_images_per_sec"], 0.1, 0.001)
    assert all(r > 0 for r in train["engine_per_epoch"] + train["reference_per_epoch"])
    assert train["engine_settings"]["channels_last"] is False  # auto: width 4 < 8 on CPU
    data = results["data"]
    assert data["batch_size"] == 64 and data["batches_per_round"] == 2
    assert_ratio_of_rounded(data["engine_over_reference"], data["engine_batches_per_sec"],
                            data["reference_batches_per_sec"], 0.01, 0.01)
    ghost = results["ghost"]
    assert ghost["batch_size"] == 64 and ghost["bn_group"] == 16
    assert_ratio_of_rounded(ghost["ghost_over_loop"], ghost["ghost_images_per_sec"],
                            ghost["loop_images_per_sec"], 0.1, 0.001)


def test_ghost_in_cache_sized_passes_equals_one_pass_float64(monkeypatch):
    """On CPU `ghost` runs whole BN groups per forward pass; same loss, same gradients,
    same running statistics as one pass over the batch."""
    from batchscale.engine import step as train_module
    from batchscale.engine.models import build_model

    torch.manual_seed(0)
    models = [build_model("resnet18", 4, group_size=4).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(24, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (24,))
    cfg = from_dict(dict(batch_size=24, bn_group=4, bn_impl="ghost"))
    losses = []
    for model, chunk in zip(models, (8, 1024), strict=True):  # 3 passes of 2 groups; 1 pass
        monkeypatch.setattr(train_module, "CPU_GHOST_CHUNK", chunk)
        setup = SimpleNamespace(cfg=cfg, model=model)
        assert train_module.forward_chunk(setup, x) == (8 if chunk == 8 else 24)
        loss, _ = train_module.forward_loss(setup, x, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
