"""What the benchmarks share: the models they time, their crops, and memory.

Each entry of `MODELS` builds one architecture at its script's default
configuration for the 21 VOC classes; `default_crop_size` asks that script's
parser for its default `--crop-size`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import keras
import tensorflow as tf

import deeplab_train
import fcn_train
import segnet_train
import unet_train
from deeplab_train import build_deeplab
from fcn_train import build_fcn
from segnet_train import build_segnet
from unet_train import build_unet

NUM_CLASSES = 21
MODELS: dict[str, Callable[[], keras.Model]] = {
    "fcn8s": lambda: build_fcn(NUM_CLASSES, "8s"),
    "unet": lambda: build_unet(NUM_CLASSES),
    "segnet": lambda: build_segnet(NUM_CLASSES),
    "deeplabv3plus_resnet50": lambda: build_deeplab(NUM_CLASSES, "v3plus", "resnet50"),
    "deeplabv3_mobilenetv2": lambda: build_deeplab(NUM_CLASSES, "v3", "mobilenetv2"),
}
# The script that trains each model, and its flags for that configuration.
SCRIPTS = {
    "fcn8s": (fcn_train, ["--variant", "8s"]),
    "unet": (unet_train, []),
    "segnet": (segnet_train, []),
    "deeplabv3plus_resnet50": (deeplab_train, ["--variant", "v3plus"]),
    "deeplabv3_mobilenetv2": (
        deeplab_train,
        ["--variant", "v3", "--backbone", "mobilenetv2"],
    ),
}


def default_crop_size(name: str) -> int:
    """The `--crop-size` that the model's script trains with by default."""
    script, argv = SCRIPTS[name]
    return script.parse_args(argv).crop_size


def add_models_arg(parser: argparse.ArgumentParser) -> None:
    """`--models`, the architectures a benchmark times (default: all)."""
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help="models to time (default: all)",
    )


def in_fresh_process(function: Callable, *args):
    """`function(*args)` in a new Python process, for a per-model peak memory.

    A process's peak resident set never goes down, so measuring several models
    in one process would report the largest so far for each of them.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def peak_memory_mb() -> float:
    """The GPU's peak (since the last reset) where there is one, else this
    process's peak resident memory (ru_maxrss is in KiB on Linux); run each
    measurement `in_fresh_process` for a number per model."""
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name() -> str:
    """ "GPU" or "CPU xN", for the table's header."""
    if tf.config.list_physical_devices("GPU"):
        return "GPU"
    return f"CPU x{os.cpu_count()}"
