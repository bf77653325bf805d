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
from batchscale.engine.data import Split, crop_flip, normalize
from batchscale.engine.setup import build
from batchscale.engine.step import forward_loss, prepare_input

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
    cfg = tiny_config()
    reference = Reference(cfg, torch.device("cpu"))
    split = Split(torch.zeros(4, 32, 32, 3, dtype=torch.uint8), torch.arange(4))
    before = [p.detach().clone() for p in reference.model.parameters()]
    loss = reference.step(normalize(split.images).contiguous(), split.labels)
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, reference.model.parameters(),
                                                                     strict=True))


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
    train = results["train"]
    assert train["engine_images_per_sec"] > 0 and train["reference_images_per_sec"] > 0
    assert len(train["engine_per_epoch"]) == len(train["reference_per_epoch"]) == 2
    assert train["engine_settings"]["channels_last"] is False  # auto: width 4 < 8 on CPU
    assert results["data"]["engine_batches_per_sec"] > 0
    assert results["ghost"]["batch_size"] == 64 and results["ghost"]["bn_group"] == 16
    assert results["ghost"]["ghost_over_loop"] > 0


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
