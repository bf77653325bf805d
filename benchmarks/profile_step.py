"""Where a training step's time goes: torch.profiler over a few engine steps, top ops by self time.

    python benchmarks/profile_step.py [--width 16 --batch-size 128 --steps 3] [--channels-last on]
                                      [--bn-group 32 --bn-impl ghost] [--compile]

Any training option is accepted as --name value (see `batchscale train --help`).
"""

import argparse

from torch.profiler import ProfilerActivity, profile

from batchscale.config import from_dict
from batchscale.engine.data import EpochLoader
from batchscale.engine.setup import build
from batchscale.engine.step import compile_model, prepare_input, train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    args, rest = parser.parse_known_args()
    fields = dict(width=16, batch_size=128, base_batch_size=128, device="cpu")
    fields.update({k.lstrip("-"): v for k, v in zip(rest[::2], rest[1::2], strict=True)})
    setup = build(from_dict(fields), progress=False)
    compile_model(setup)
    loader = EpochLoader(setup.train, setup.cfg.batch_size, seed=0, epoch=0)
    images, labels = loader.batch(0)
    train_step(setup, prepare_input(setup, images), labels)  # warm-up (and compile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if setup.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for step in range(1, args.steps + 1):
            images, labels = loader.batch(step)
            train_step(setup, prepare_input(setup, images), labels)[0].item()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
