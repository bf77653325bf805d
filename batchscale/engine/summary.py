"""A run's summary (summary.json): its status and reason by the collapse rule, its accuracies,
its lr plan, its data, its memory and its environment.
"""

from __future__ import annotations

import torch

from batchscale.engine import collapse, rundir
from batchscale.engine.resume import Position
from batchscale.engine.setup import Setup


def summarize(setup: Setup, status: str, position: Position, rows: list[dict],
              diverged_at_step: int | None = None, error: str | None = None) -> dict:
    cfg, plan = setup.cfg, setup.plan
    last = rows[-1] if rows else {}
    collapsed = collapse.collapsed_at(rows, cfg, class_count(setup))
    reason = None
    if status == "diverged":
        reason = collapse.NONFINITE if diverged_at_step is not None else collapse.REASON
    elif status == "completed" and collapsed is not None:  # trained on past a collapse
        status, reason = "diverged", collapse.REASON
    if reason == collapse.REASON and collapsed is not None:  # the epoch's last step
        diverged_at_step = collapsed * plan.steps_per_epoch - 1
    return {
        "status": status,
        "reason": reason,
        "collapsed_at_epoch": collapsed,
        "final_test_acc": last.get("test_acc"),
        "final_train_acc": last.get("train_acc"),
        "best_test_acc": max((r["test_acc"] for r in rows), default=None),
        "epochs_completed": len(rows),
        "diverged_at_step": diverged_at_step,
        "peak_lr": cfg.peak_lr,
        "warmup_steps": plan.warmup_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "train_images": len(setup.train),
        "test_images": len(setup.test),
        "noise_scale_g": cfg.peak_lr * (len(setup.train) / cfg.batch_size - 1),
        "wall_s": round(position.wall_s, 3),
        "memory": memory(setup),
        "error": error,
        "environment": rundir.environment(setup.device, cfg.seed, setup.world_size),
    }


def class_count(setup: Setup) -> int:
    """The number of classes the run trains on (chance accuracy is its inverse)."""
    return int(setup.train.labels.max().item()) + 1 if len(setup.train) else 10


def memory(setup: Setup) -> dict:
    """The resident data set's bytes (uint8 images + labels, held once on the training
    device) and the peak memory of this process: host RSS and, on CUDA, allocated device memory."""
    import resource

    data = sum(t.element_size() * t.nelement() for split in (setup.train, setup.test)
               for t in (split.images, split.labels))
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    report = {"data_mb": round(data / 2**20, 2), "peak_host_rss_mb": round(peak_rss_kb / 1024, 1)}
    if setup.device.type == "cuda":
        report["peak_device_mb"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**20, 1)
    return report
