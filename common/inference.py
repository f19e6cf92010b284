"""Running a trained model on whole images of any size, with optional TTA.

Used by `evaluate.py` (multi-scale / flip evaluation) and `predict.py`. The
network sees each image padded at the bottom/right with the dataset mean to a
multiple of `size_divisor`, exactly as in validation during training
(`common.voc.make_dataset`), and the padding is cropped off the output. Both
scripts read the training run's settings from the `results.json` beside the
model (`common.results.read_run`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from common import layers  # noqa: F401  (registers the custom layers for loading)
from common.augment import pad_image
from common.errors import InputError
from common.voc import round_up


def load_model(path: str) -> keras.Model:
    """Load a `.keras` model saved by any training script of this project.

    Importing `common.layers` (above) registers the project's custom layers,
    so Keras can rebuild them from the file. A file Keras cannot read (not a
    model, truncated, a model with layers from elsewhere) is an `InputError`
    that names it.
    """
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds; all mean "not ours".
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise InputError(
            f"Cannot load {path} as a Keras model: it is not a complete .keras "
            f"file of this project (Keras says: {type(error).__name__}: {reason}). "
            "Give a best.keras written by a training script."
        ) from None


def check_same_size_output(model: keras.Model, size_divisor: int = 32) -> None:
    """Refuse models whose output is smaller than their input (valid-padding U-Net).

    Those need the overlap-tile evaluation that their training script runs
    (its `results.json`); padding to a multiple of `size_divisor` does not fit them.
    """
    size = 8 * size_divisor
    try:
        output = model(tf.zeros((1, size, size, 3)), training=False)
    except (ValueError, tf.errors.InvalidArgumentError):
        output = None
    if output is None or tuple(output.shape[1:3]) != (size, size):
        raise InputError(
            f"Model {model.name!r} does not return logits the size of its input "
            "(e.g. U-Net with --padding valid). Its training run already scored it "
            "on every pixel of the validation split: see results.json beside it."
        )


def predict_probabilities(
    model: keras.Model, image: tf.Tensor, size_divisor: int = 32
) -> tf.Tensor:
    """Softmax `(H, W, C)` for one float32 `(H, W, 3)` image in [0, 255]."""
    height, width = int(image.shape[0]), int(image.shape[1])
    padded = pad_image(
        tf.cast(image, tf.float32),
        round_up(height, size_divisor),
        round_up(width, size_divisor),
    )
    logits = model(padded[None], training=False)[0, :height, :width]
    return tf.nn.softmax(tf.cast(logits, tf.float32))


def predict_multiscale(
    model: keras.Model,
    image: tf.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size_divisor: int = 32,
) -> tf.Tensor:
    """Average softmax over rescaled (and mirrored) copies of `image`.

    DeepLab's test-time augmentation (v2 Sec. 4.1, v3 Sec. 4.1): each scale's
    probabilities are resized back to the original size before averaging, so
    labels are never resized. With `scales=(1.0,)` and no flip it is plain
    `predict_probabilities`.
    """
    image = tf.cast(image, tf.float32)
    size = tf.shape(image)[:2]
    total = 0.0
    for scale in scales:
        scaled_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        scaled = image if scale == 1.0 else tf.image.resize(image, scaled_size)
        views = [(scaled, False)] + ([(scaled[:, ::-1], True)] if flip else [])
        for view, mirrored in views:
            probabilities = predict_probabilities(model, view, size_divisor)
            if mirrored:
                probabilities = probabilities[:, ::-1]
            if scale != 1.0:
                probabilities = tf.image.resize(probabilities, size, method="bilinear")
            total += probabilities
    return total / (len(scales) * (2 if flip else 1))


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0), with a clear error for bad input."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"--scales {text!r}: expected numbers like 0.5,1.0,1.5"
        ) from None
    if not scales or min(scales) <= 0:
        raise InputError(f"--scales {text!r}: every scale must be positive")
    return scales


def to_numpy_labels(probabilities: tf.Tensor) -> np.ndarray:
    """Class index per pixel, uint8 `(H, W)`."""
    return np.argmax(np.asarray(probabilities), axis=-1).astype(np.uint8)


def with_progress(items: Iterable, total: int, unit: str = "image") -> Iterator:
    """Yield `items`; show a Keras progress bar on a terminal, else a line per 10 %.

    A log file (or CI) gets a few plain lines instead of a bar redrawn in place.
    """
    if sys.stdout.isatty():
        bar = keras.utils.Progbar(total, unit_name=unit)
        for done, item in enumerate(items, 1):
            yield item
            bar.update(done)
        return
    every = max(1, total // 10)
    start = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 or done == total:
            seconds = time.perf_counter() - start
            print(f"  {unit} {done}/{total}, {seconds:.0f} s", flush=True)
