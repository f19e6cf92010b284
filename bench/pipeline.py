"""Does the model ever wait for data? The input pipeline vs each model's step.

    bash data/voc_download.sh               # once: PASCAL VOC 2012
    python bench/pipeline.py --steps 3      # the table of docs/speed.md, every model
    python bench/pipeline.py --models unet fcn8s

The pipeline reads the 28 train images of `bench/voc_sample_ids.txt` from
`--data-dir`, so every VOC download gives the same workload. For each
architecture at its script's default crop (FCN 320, U-Net 256, SegNet 360,
DeepLab 512), three measurements:
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
import shutil
import sys
import tempfile
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
    sample_pairs,
)
from common.cli import run_cli  # noqa: E402
from common.losses import segmentation_loss  # noqa: E402
from common.training import StepTimer  # noqa: E402
from common.voc import VOC_DIR, make_dataset  # noqa: E402


def copy_as_voc_split(pairs: list[tuple[str, str]], data_dir: str, split: str) -> None:
    """Copy `pairs` into a new VOC folder `data_dir` whose `split` lists just them.

    `make_dataset`, which is what this benchmark times, reads a VOC split file,
    and VOC's own train.txt lists 1,464 images, not the benchmark's 28.
    """
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(data_dir, folder))
    for image_path, mask_path in pairs:
        shutil.copy(image_path, os.path.join(data_dir, "JPEGImages"))
        shutil.copy(mask_path, os.path.join(data_dir, "SegmentationClass"))
    ids = [os.path.splitext(os.path.basename(image))[0] for image, _ in pairs]
    split_file = os.path.join(data_dir, "ImageSets", "Segmentation", f"{split}.txt")
    with open(split_file, "w") as f:
        f.write("\n".join(ids) + "\n")


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
        "--data-dir",
        default=VOC_DIR,
        help="your PASCAL VOC 2012 folder (default: %(default)s)",
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
    pairs = sample_pairs(args.data_dir, "train")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as data_dir:
        copy_as_voc_split(pairs, data_dir, "train")
        rows = [in_fresh_process(measure, name, data_dir, args) for name in args.models]
    print(
        f"\n{os.path.abspath(args.data_dir)}: batch {args.batch_size}, {device_name()}"
    )
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
    run_cli(main)
