"""Does the model ever wait for data? Time the input pipeline and a U-Net step.

    python bench/pipeline.py                      # VOC sample if present, else shapes
    python bench/pipeline.py --data-dir data/VOCdevkit/VOC2012 --filters 64 128 256 512

Three measurements, one table:
1. `make_dataset` alone in training mode (decode, scale, pad, crop, flip, batch);
2. `model.fit` on one batch held in memory (the model's own speed: baseline);
3. `model.fit` on the real pipeline.
If (3) is much slower than (2), the accelerator waits for data: add `--cache`,
more CPU cores, or fewer augmentation steps. Peak memory is the process's
resident set (and the GPU's peak where there is one).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import shapes  # noqa: E402
from common.losses import segmentation_loss  # noqa: E402
from common.voc import VOC_CLASSES, make_dataset  # noqa: E402
from unet_train import build_unet  # noqa: E402

VOC_SAMPLE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "data",
    "voc_sample",
    "VOC2012",
)


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step after the first `warmup` ones."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def peak_memory_mb() -> float:
    """The GPU's peak (since the last reset) where there is one, else this
    process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_pipeline(dataset: tf.data.Dataset, batches: int, warmup: int) -> float:
    """Seconds per batch of iterating `dataset`, after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches


def time_fit(model: keras.Model, dataset: tf.data.Dataset, steps: int, warmup: int):
    """Median seconds per `fit` step over `steps` steps after `warmup` steps."""
    timer = StepTimer(warmup)
    model.fit(
        dataset, epochs=1, steps_per_epoch=steps + warmup, callbacks=[timer], verbose=0
    )
    return sorted(timer.times)[len(timer.times) // 2]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", help="VOC-layout folder (default: VOC sample or shapes)"
    )
    parser.add_argument(
        "--crop-size", type=int, default=512, help="default: %(default)s"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="default: %(default)s"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=20,
        help="timed pipeline batches (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed training steps (default: %(default)s)",
    )
    parser.add_argument(
        "--filters",
        type=int,
        nargs="+",
        default=[16, 32, 64, 128],
        help="U-Net widths (paper: 64 128 256 512; default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    data_dir = args.data_dir or (
        VOC_SAMPLE if os.path.isdir(VOC_SAMPLE) else shapes.generate_shapes()
    )
    dataset = make_dataset(data_dir, "train", args.batch_size, args.crop_size, True)
    pipeline_seconds = time_pipeline(dataset, args.batches, warmup=2)
    pipeline_memory = peak_memory_mb()

    model = build_unet(len(VOC_CLASSES), filters=args.filters)
    model.compile(optimizer="adam", loss=segmentation_loss())
    one_batch = tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()
    memory_seconds = time_fit(model, one_batch, args.steps, warmup=2)
    real_seconds = time_fit(model, dataset, args.steps, warmup=2)

    rows = [
        {
            "what": "make_dataset alone",
            "seconds": pipeline_seconds,
            "peak": pipeline_memory,
        },
        {"what": "U-Net fit, batch in memory", "seconds": memory_seconds, "peak": None},
        {
            "what": "U-Net fit, real pipeline",
            "seconds": real_seconds,
            "peak": peak_memory_mb(),
        },
    ]
    device = (
        "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}"
    )
    print(
        f"\n{os.path.abspath(data_dir)}: crop {args.crop_size}, batch "
        f"{args.batch_size}, U-Net filters {args.filters}, {device}"
    )
    print(f"{'':<28}{'images/s':>10}{'ms/step':>10}{'peak MB':>10}{'vs memory':>11}")
    for row in rows:
        peak = f"{row['peak']:.0f}" if row["peak"] else "-"
        print(
            f"{row['what']:<28}{args.batch_size / row['seconds']:>10.1f}"
            f"{1000 * row['seconds']:>10.1f}{peak:>10}"
            f"{row['seconds'] / memory_seconds:>10.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
