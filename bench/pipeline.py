"""Does the model ever wait for data? The input pipeline vs each model's step.

    python bench/pipeline.py                # every model, VOC sample if present
    python bench/pipeline.py --models unet fcn8s --data-dir data/VOCdevkit/VOC2012

For each architecture at its script's default crop (FCN 320, U-Net 256,
SegNet 360, DeepLab 512), three measurements:
1. `make_dataset` alone in training mode (decode, scale, pad, crop, flip, batch);
2. `model.fit` on one batch held in memory (the model's own speed: baseline);
3. `model.fit` on the real pipeline.
The last column is (3) / (2). Above 1.05 the accelerator waits for data: add
`--cache`, more CPU cores, or fewer augmentation steps. Peak memory is the
process's resident set (and the GPU's peak where there is one). On a CPU the
pipeline and the model share the cores, so the ratio also shows what the
pipeline's threads take away from the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.harness import (  # noqa: E402
    MODELS,
    add_models_arg,
    default_crop_size,
    device_name,
    in_fresh_process,
    peak_memory_mb,
)
from common import shapes  # noqa: E402
from common.losses import segmentation_loss  # noqa: E402
from common.training import StepTimer  # noqa: E402
from common.voc import make_dataset  # noqa: E402

VOC_SAMPLE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "data",
    "voc_sample",
    "VOC2012",
)


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
        dataset,
        shuffle=False,  # The pipeline shuffles; Keras cannot shuffle a Dataset.
        epochs=1,
        steps_per_epoch=steps + warmup,
        callbacks=[timer],
        verbose=0,
    )
    return timer.median_ms() / 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_models_arg(parser)
    parser.add_argument(
        "--data-dir", help="VOC-layout folder (default: VOC sample or shapes)"
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        help="one crop for every model (default: each script's default crop)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2,
        help="images per step; the ratio hardly depends on it, since both the "
        "pipeline's and the model's time grow with it (default: %(default)s)",
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
    return parser.parse_args(argv)


def measure(name: str, data_dir: str, args: argparse.Namespace) -> dict:
    """Pipeline alone, fit on a batch in memory, fit on the pipeline: one model."""
    crop_size = args.crop_size or default_crop_size(name)
    dataset = make_dataset(
        data_dir,
        "train",
        args.batch_size,
        crop_size,
        training=True,
        input_size_rule=lambda size: size,  # Each script's default crop fits it.
    )
    pipeline_seconds = time_pipeline(dataset, args.batches, warmup=2)
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    model.compile(optimizer="adam", loss=segmentation_loss())
    one_batch = tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()
    memory_seconds = time_fit(model, one_batch, args.steps, warmup=2)
    real_seconds = time_fit(model, dataset, args.steps, warmup=2)
    return {
        "model": name,
        "crop": crop_size,
        "pipeline_ips": args.batch_size / pipeline_seconds,
        "memory_ms": 1000 * memory_seconds,
        "real_ms": 1000 * real_seconds,
        "peak_mb": peak_memory_mb(),
        "ratio": real_seconds / memory_seconds,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    data_dir = args.data_dir or (
        VOC_SAMPLE if os.path.isdir(VOC_SAMPLE) else shapes.generate_shapes()
    )
    rows = [in_fresh_process(measure, name, data_dir, args) for name in args.models]
    print(f"\n{os.path.abspath(data_dir)}: batch {args.batch_size}, {device_name()}")
    header = ("crop", "data img/s", "memory ms", "real ms", "peak MB", "real/mem")
    print(f"{'model':<26}" + "".join(f"{h:>11}" for h in header))
    for row in rows:
        print(
            f"{row['model']:<26}{row['crop']:>11}{row['pipeline_ips']:>11.1f}"
            f"{row['memory_ms']:>11.0f}{row['real_ms']:>11.0f}"
            f"{row['peak_mb']:>11.0f}{row['ratio']:>10.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
