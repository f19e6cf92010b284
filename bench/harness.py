"""What the benchmarks share: the models they time, their crops, memory, VOC images.

Each entry of `MODELS` builds one architecture at its script's default
configuration for the 21 VOC classes; `default_crop_size` asks that script's
parser for its default `--crop-size`. `sample_pairs` finds the 40 VOC images of
`voc_sample_ids.txt` in your VOC download, so every bench reads the same ones.
Memory and the device are asked of the Keras backend that runs the process
(`common.backend`), so a benchmark runs on JAX without TensorFlow.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor

import keras

import deeplab_train
import fcn_train
import segnet_train
import unet_train
from common import backend
from common.backend import tf
from common.errors import DatasetError
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


def in_fresh_process(function: Callable, *args, env: Mapping[str, str] | None = None):
    """`function(*args)` in a new Python process, for a per-model peak memory.

    A process's peak resident set never goes down, so measuring several models
    in one process would report the largest so far for each of them. `env`
    adds environment variables for that process only, e.g.
    `{"TF_ENABLE_ONEDNN_OPTS": "1"}`, which TensorFlow reads when it loads, or
    `{"KERAS_BACKEND": "jax"}`, which Keras reads when it is imported: the
    "spawn" start method runs a new interpreter, which imports Keras (and the
    module of `function`) afresh under this environment.
    """
    context = multiprocessing.get_context("spawn")
    saved = dict(os.environ)
    os.environ.update(env or {})  # The spawned process copies the environment.
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(function, *args).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# TensorFlow's oneDNN switch, as a benchmark's --onednn flag names its settings.
ONEDNN = {
    "default": {},
    "off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
}
# CPU features that decide what oneDNN and mixed precision can do.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name and the features of `CPU_FEATURES` it has (Linux)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    present = " ".join(feature for feature in CPU_FEATURES if feature in flags)
    return f"{model}, {os.cpu_count()} cores; features: {present or 'none of those'}"


def peak_memory_mb() -> float:
    """The accelerator's peak (since the last reset) where there is one, else
    this process's peak resident memory (ru_maxrss is in KiB on Linux); run
    each measurement `in_fresh_process` for a number per model."""
    if not backend.has_accelerator():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if backend.name() == "tensorflow":
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if backend.name() == "jax":
        import jax

        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def device_name() -> str:
    """ "GPU" or "CPU xN", for the table's header."""
    if backend.has_accelerator():
        return "GPU"
    return f"CPU x{os.cpu_count()}"


# "ID SPLIT" per line: the VOC images the benchmarks read, whoever runs them.
SAMPLE_IDS_FILE = os.path.join(os.path.dirname(__file__), "voc_sample_ids.txt")
SPLITS = ("train", "val", "trainval")
VOC_HINT = (
    "Download PASCAL VOC 2012 with `bash data/voc_download.sh`, or point "
    "--data-dir at the VOC2012 folder that holds JPEGImages/."
)


def sample_pairs(data_dir: str, split: str) -> list[tuple[str, str]]:
    """`(image_path, mask_path)` in the VOC2012 folder `data_dir` for each image of
    `split` in `voc_sample_ids.txt`, in the file's order; stops if any file is
    missing, naming it."""
    with open(SAMPLE_IDS_FILE) as f:
        rows = [line.split() for line in f if line.strip() and line[0] != "#"]
    ids = [
        image_id for image_id, image_split in rows if split in (image_split, "trainval")
    ]
    pairs = [
        (
            os.path.join(data_dir, "JPEGImages", f"{image_id}.jpg"),
            os.path.join(data_dir, "SegmentationClass", f"{image_id}.png"),
        )
        for image_id in ids
    ]
    if not os.path.isdir(data_dir):
        raise DatasetError(f"--data-dir {data_dir} does not exist. {VOC_HINT}")
    missing = [
        os.path.relpath(path, data_dir)
        for pair in pairs
        for path in pair
        if not os.path.isfile(path)
    ]
    if missing:
        named = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise DatasetError(
            f"--data-dir {data_dir} lacks {len(missing)} of the {2 * len(ids)} "
            f"files that bench/voc_sample_ids.txt lists for {split}: {named}. "
            + VOC_HINT
        )
    return pairs
