"""When a run has collapsed: it trains on, with finite numbers, but has stopped learning.

Batch norm makes the network's output invariant to the scale of most weights, so a learning
rate far past the stable range rarely overflows: the weights grow, the effective step shrinks,
and the network settles on (nearly) constant predictions. Its loss stays finite; only
`diverged` (non-finite loss) was recorded before. The rule below is checked after every epoch
on the metrics row the engine already writes (docs/collapse.md shows the curves it was chosen
from, docs/results/collapse-rule/):

An epoch is *stalled* when, after warmup,
  - its training accuracy is at most 1/classes + margin   (chance level), and
  - its training loss is at least ln(classes) - LOSS_MARGIN (no better than predicting every
    class equally often: ln 10 = 2.303 for CIFAR-10).
It is *exploded* when it is stalled and its loss is at least EXPLODED x ln(classes).

A run has collapsed at epoch e when
  1. epochs e-2 .. e are exploded (WINDOW = 3 in a row), or
  2. epochs up to e are stalled for max(WINDOW, epochs / 2) epochs in a row (`epochs` of the
     config: a run at chance for half of its budget does not train within it).

The accuracy margin is ACC_MARGIN or SIGMAS standard errors of a chance-level accuracy over
the epoch's n training images, whichever is larger: sqrt(p (1 - p) / n) with p = 1/classes is
0.019 for 256 images (small test runs), 0.009 for 1024, 0.0013 for 50,000. n is read from the
rows themselves (steps per epoch x batch size).

Why two tiers, from the measured curves: a slow run can sit at chance for a third of its
epochs with a loss just above ln(classes), then learn (peak lr 1.6: chance for 8 of 24 epochs,
then 21%), so a short window on "stalled" alone would call it collapsed. A loss far above
ln(classes) at chance accuracy for three epochs was seen only in runs that never came back
(peak lr 12.8 and 51.2). Accuracy and loss are both needed: a slow but learning run can sit
near chance accuracy while its loss already falls below ln(classes), and its first epochs'
loss can be high (large first steps) while its accuracy is already rising.
Epochs before the end of warmup are
not judged: the learning rate is still climbing. The function is pure (metrics rows + config
in, epoch out) so that the engine, the report and `advise` share one definition.
"""

from __future__ import annotations

import math

WINDOW = 3  # consecutive exploded epochs (and the least number of stalled ones)
EXPLODED = 1.25  # an exploded epoch's loss is at least this times ln(classes)
ACC_MARGIN = 0.02  # above chance accuracy (1 / classes), at least
SIGMAS = 3.0  # or this many standard errors of a chance-level accuracy, if larger
LOSS_MARGIN = 0.02  # below ln(classes)
REASON = "collapse"  # summary.json: status "diverged", reason "collapse"
NONFINITE = "nonfinite"  # summary.json: status "diverged", reason "nonfinite"


def first_judged_epoch(warmup_epochs: float) -> int:
    """The first epoch (1-based) the rule looks at: the first that starts after warmup."""
    return math.ceil(warmup_epochs) + 1


def accuracy_margin(images: int, classes: int = 10) -> float:
    """How far above chance an epoch's training accuracy over `images` images may be."""
    chance = 1.0 / classes
    return max(ACC_MARGIN, SIGMAS * math.sqrt(chance * (1 - chance) / max(images, 1)))


def stalled_at_chance(loss: float, accuracy: float, images: int, classes: int = 10) -> bool:
    """Whether an epoch of `images` training images is at chance: accuracy ≤ 1/classes + margin
    and loss ≥ ln(classes) − LOSS_MARGIN."""
    return (accuracy <= 1.0 / classes + accuracy_margin(images, classes)
            and loss >= math.log(classes) - LOSS_MARGIN)


def stalled(row: dict, batch_size: int, classes: int = 10) -> bool:
    """Whether one epoch's row is at chance: accuracy ≤ chance + margin and loss ≥ ln(C) − m."""
    loss, acc = row.get("train_loss"), row.get("train_acc")
    if loss is None or acc is None:
        return False
    images = row["step"] // row["epoch"] * batch_size  # steps per epoch x batch
    return stalled_at_chance(loss, acc, images, classes)


def stalled_needed(epochs: int) -> int:
    """How many stalled epochs in a row are a collapse: max(WINDOW, half the budget)."""
    return max(WINDOW, math.ceil(epochs / 2))


class Streaks:
    """The rule's two counters, fed one judged epoch at a time: `add` returns True when the run
    has collapsed (WINDOW exploded epochs in a row, or `needed` stalled ones)."""

    def __init__(self, needed: int):
        self.needed, self.stalled, self.exploded = needed, 0, 0

    def add(self, is_stalled: bool, is_exploded: bool) -> bool:
        self.stalled = self.stalled + 1 if is_stalled else 0
        self.exploded = self.exploded + 1 if is_stalled and is_exploded else 0
        return self.exploded >= WINDOW or self.stalled >= self.needed


def collapsed_at(rows: list[dict], cfg, classes: int = 10) -> int | None:
    """The epoch (1-based, as in the rows' "epoch") at which the rule first fires, or None.
    `cfg` needs `warmup_epochs`, `batch_size` and `epochs` (a TrainConfig or the dict of a
    saved config.yaml)."""
    get = cfg.get if isinstance(cfg, dict) else lambda name: getattr(cfg, name)
    start = first_judged_epoch(get("warmup_epochs"))
    batch_size = get("batch_size")
    streaks = Streaks(stalled_needed(get("epochs")))
    for row in rows:
        is_stalled = row["epoch"] >= start and stalled(row, batch_size, classes)
        if streaks.add(is_stalled, is_stalled and
                       row["train_loss"] >= EXPLODED * math.log(classes)):
            return row["epoch"]
    return None
