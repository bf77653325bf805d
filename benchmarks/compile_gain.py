"""torch.compile: its compile time and its steady-state gain over eager, interleaved in one process.

    python benchmarks/compile_gain.py [--width 16 --batch-size 128 --steps 6] [--json PATH]

Three engines train on the same batches, one step each in turn: eager NCHW, eager channels_last
(the default) and compiled channels_last (`--compile`). The first step of each is reported apart
(for the compiled one it is the compile time); images/s are medians of the later steps.
"""

import argparse
import os
import statistics
import time

from batchscale.bench import emit
from batchscale.config import from_dict
from batchscale.engine.data import EpochLoader
from batchscale.engine.setup import build
from batchscale.engine.step import compile_model, prepare_input, train_step

VARIANTS = {"eager_nchw": dict(channels_last="off"), "eager_channels_last": dict(),
            "compiled_channels_last": dict(compile=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    setups = {}
    for name, extra in VARIANTS.items():
        setups[name] = build(from_dict(dict(width=args.width, batch_size=args.batch_size,
                                            base_batch_size=args.batch_size, device=args.device,
                                            **extra)), progress=False)
        compile_model(setups[name])
    loader = EpochLoader(setups["eager_nchw"].train, args.batch_size, seed=0, epoch=0)
    first, times = {}, {name: [] for name in setups}
    for step in range(args.steps + 1):
        images, labels = loader.batch(step % len(loader))
        for name, setup in setups.items():
            start = time.perf_counter()
            train_step(setup, prepare_input(setup, images), labels)[0].item()
            elapsed = time.perf_counter() - start
            if step:
                times[name].append(elapsed)
            else:
                first[name] = elapsed
    rates = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    result = {f"{name}_images_per_sec": round(rate, 1) for name, rate in rates.items()}
    result.update({
        "compile_first_step_s": round(first["compiled_channels_last"], 1),
        "eager_first_step_s": round(first["eager_channels_last"], 2),
        "compiled_over_eager_channels_last": round(
            rates["compiled_channels_last"] / rates["eager_channels_last"], 3),
        "channels_last_over_nchw": round(rates["eager_channels_last"] / rates["eager_nchw"], 3),
        "width": args.width, "batch_size": args.batch_size, "device": args.device,
        "load": round(os.getloadavg()[0], 2)})
    emit(result, args.json)


if __name__ == "__main__":
    main()
