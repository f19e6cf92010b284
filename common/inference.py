"""Running a trained model on images of any size, whole or tiled, with optional TTA.

Used by `evaluate.py` (multi-scale / flip evaluation) and `predict.py`. The
network sees each image padded at the bottom/right with the dataset mean to a
multiple of `size_divisor`, exactly as in validation during training
(`common.voc.make_dataset`), and the padding is cropped off the output. Both
scripts read the training run's settings from the `results.json` beside the
model (`common.results.read_run`), among them, for images that are not RGB,
the band means to pad with (`pad_value`; `IMAGE_MEAN` for RGB).

With `--tile SIZE` (`common.cli.add_tile_args`, `predict_tiled`) the network sees
overlapping SIZE x SIZE windows instead (mmsegmentation's mode="slide"), and
each pixel's softmax is the mean over its windows, weighted by a Gaussian
(nnU-Net) or a tent that falls towards a window's edges. It is for images too
large for memory as a whole (3000-10000 px: remote sensing, pathology, phone
photos) and for models trained on crops, which then see the scale they learnt.
Softmax probabilities are blended, not logits: they are bounded, so one
window's overconfident edge cannot outvote the others, and an exported model,
which returns log-probabilities, blends exactly like its Keras source.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import h5py
import keras
import numpy as np

from common import layers  # noqa: F401  (registers the custom layers for loading)
from common.augment import pad_image
from common.backend import tf
from common.constants import IMAGE_MEAN
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


def save_with_float16_weights(model: keras.Model, path: str) -> None:
    """Save `model` as a `.keras` file whose float32 weights are stored as float16.

    Half the size, for a model to download (`weights/`: the GPU machine of
    docs/gpu.md returns files of at most 16 MiB, and the repository carries
    them). The file is an ordinary `.keras`: its layers still compute in
    float32, and loading casts each stored weight back (Keras' `assign`), on
    any backend. Only the weights are rounded, to float16's 11 significant
    bits; `tests/test_backends.py` bounds what that moves.
    """
    model.save(path)
    with zipfile.ZipFile(path) as saved:
        members = {name: saved.read(name) for name in saved.namelist()}
    members["model.weights.h5"] = _float16_h5(members["model.weights.h5"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as packed:
        for name, data in members.items():
            packed.writestr(name, data)


def _float16_h5(data: bytes) -> bytes:
    """The HDF5 file `data` with every float32 dataset as float16, all else kept."""
    rewritten = io.BytesIO()
    with h5py.File(io.BytesIO(data), "r") as source, h5py.File(rewritten, "w") as copy:
        copy.attrs.update(source.attrs)

        def add(name: str, item: h5py.Group | h5py.Dataset) -> None:
            if isinstance(item, h5py.Dataset):
                values = item[()]
                if values.dtype == np.float32:
                    values = values.astype(np.float16)
                copy.create_dataset(name, data=values)
            else:
                copy.require_group(name)
            copy[name].attrs.update(item.attrs)

        source.visititems(add)
    return rewritten.getvalue()


def check_same_size_output(model: keras.Model, size_divisor: int = 32) -> None:
    """Refuse models whose output is smaller than their input (valid-padding U-Net).

    Those need the overlap-tile evaluation that their training script runs
    (its `results.json`); padding to a multiple of `size_divisor` does not fit them.
    """
    size = 8 * size_divisor
    bands = model.input_shape[-1] or 3
    try:
        output = model(tf.zeros((1, size, size, bands)), training=False)
    except (ValueError, tf.errors.InvalidArgumentError):
        output = None
    if output is None or tuple(output.shape[1:3]) != (size, size):
        raise InputError(
            f"Model {model.name!r} does not return logits the size of its input "
            "(e.g. U-Net with --padding valid). Its training run already scored it "
            "on every pixel of the validation split: see results.json beside it."
        )


def predict_probabilities(
    model: keras.Model,
    image: tf.Tensor,
    size_divisor: int = 32,
    tile_settings: dict | None = None,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tf.Tensor:
    """Softmax `(H, W, C)` for one float32 `(H, W, 3)` image in [0, 255].

    The whole image at once, or, given `tile_settings` (`predict_tiled`'s
    keyword arguments, from `tile_settings(args, ...)`), window by window.
    Images that are not RGB have `(H, W, bands)` and pad with their band
    means (`pad_value`, the run's `ImageFormat.pad_value`).
    """
    if tile_settings is not None:
        return tf.constant(
            predict_tiled(
                model,
                image,
                size_divisor=size_divisor,
                pad_value=pad_value,
                **tile_settings,
            )
        )
    height, width = int(image.shape[0]), int(image.shape[1])
    padded = pad_image(
        tf.cast(image, tf.float32),
        round_up(height, size_divisor),
        round_up(width, size_divisor),
        (height, width),
        tf.experimental.numpy,
        pad_value,
    )
    logits = model(padded[None], training=False)[0, :height, :width]
    return tf.nn.softmax(tf.cast(logits, tf.float32))


def predict_multiscale(
    model: keras.Model,
    image: tf.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size_divisor: int = 32,
    tile_settings: dict | None = None,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tf.Tensor:
    """Average softmax over rescaled (and mirrored) copies of `image`.

    DeepLab's test-time augmentation (v2 Sec. 4.1, v3 Sec. 4.1): each scale's
    probabilities are resized back to the original size before averaging, so
    labels are never resized. With `scales=(1.0,)` and no flip it is plain
    `predict_probabilities`. With `tile_settings`, each copy is predicted in
    windows (as mmsegmentation's slide mode under its test-time augmentation).
    `pad_value`: one value per band, see `predict_probabilities`.
    """
    image = tf.cast(image, tf.float32)
    size = tf.shape(image)[:2]
    total = 0.0
    for scale in scales:
        scaled_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        scaled = image if scale == 1.0 else tf.image.resize(image, scaled_size)
        views = [(scaled, False)] + ([(scaled[:, ::-1], True)] if flip else [])
        for view, mirrored in views:
            probabilities = predict_probabilities(
                model, view, size_divisor, tile_settings, pad_value
            )
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


def scales_for_run(
    scales: tuple[float, ...] | None, run: dict | None
) -> tuple[float, ...]:
    """`--scales` as given (`parse_scales`), else the run's `--image-scale`, else 1.0.

    A model trained on images resized at load (`--image-scale 0.5`) learnt
    objects at that size: it is scored, and predicts, on images resized the
    same way, and its softmax is upsampled to the full-size image and labels.
    """
    if scales:
        return scales
    return (float(((run or {}).get("settings") or {}).get("image_scale", 1.0)),)


def to_numpy_labels(probabilities: tf.Tensor) -> np.ndarray:
    """Class index per pixel, uint8 `(H, W)`."""
    return np.argmax(np.asarray(probabilities), axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------
# Tiled inference: large images, one window at a time
# --------------------------------------------------------------------------
#
# mmsegmentation's mode="slide" and nnU-Net's sliding window: the network sees
# overlapping `tile` x `tile` windows, never the whole image, and each pixel's
# softmax is the weighted mean over the windows that contain it. Weights fall
# towards a window's edges, where the network sees the least context.

TILE_BLENDS = ("gaussian", "linear")


def tile_settings(
    args: argparse.Namespace, size_divisor: int, run: dict | None = None
) -> dict | None:
    """The `predict_tiled` keyword arguments the --tile flags give; None without.

    `--tile crop` takes the training crop from `run` (the results.json of the
    model's training run, `common.results.read_run`). A window must be a
    multiple of `size_divisor`, the size a Keras model's input is padded to.
    """
    if args.tile is None:
        return None
    tile = args.tile
    if tile == "crop":
        tile = ((run or {}).get("settings") or {}).get("crop_size")
        if not tile:
            raise InputError(
                "--tile crop: no training crop size (settings.crop_size) in the "
                "results.json beside the model; give a size, e.g. --tile 512."
            )
    if tile % size_divisor:
        below, above = tile // size_divisor * size_divisor, round_up(tile, size_divisor)
        nearest = f"{below} or {above}" if below else f"{above}"
        raise InputError(
            f"--tile {tile}: must be a multiple of {size_divisor}, the multiple this "
            f"model's input is padded to; the nearest windows it takes are {nearest}."
        )
    return {
        "tile": tile,
        "tile_overlap": args.tile_overlap,
        "tile_blend": args.tile_blend,
        "tile_batch_size": args.tile_batch_size,
    }


def tile_starts(length: int, tile: int, tile_overlap: float) -> list[int]:
    """First pixel of each window along an axis of `length` pixels.

    Windows overlap by at least `round(tile_overlap * tile)` pixels and are
    spread evenly from 0 to `length - tile` (nnU-Net), so the last one ends at
    the border instead of sticking out: every window lies inside the image.
    """
    if length <= tile:
        return [0]
    stride = max(1, tile - round(tile_overlap * tile))
    steps = -(-(length - tile) // stride)
    return [round(step * (length - tile) / steps) for step in range(steps + 1)]


def tile_weights(height: int, width: int, tile_blend: str = "gaussian") -> np.ndarray:
    """Blending weight of each pixel of a window, float32 `(height, width)`.

    1 at the centre, falling towards the edges but positive everywhere, so
    that a border pixel seen by one window only still gets its prediction.
    "gaussian": nnU-Net's, sigma 1/8 of the window along each axis (about
    3e-4 at an edge's middle); "linear": a tent, about 1/size at the edges.
    """

    def along(length: int) -> np.ndarray:
        distance = np.abs(np.arange(length) - (length - 1) / 2)
        if tile_blend == "gaussian":
            return np.exp(-0.5 * (distance / (length / 8)) ** 2)
        return 1 - distance / (length / 2)

    weights = np.outer(along(height), along(width))
    return (weights / weights.max()).astype(np.float32)


def tiled_probability_bands(
    model: Callable,
    image: np.ndarray,
    tile: int,
    tile_overlap: float = 0.25,
    tile_blend: str = "gaussian",
    tile_batch_size: int = 4,
    size_divisor: int = 32,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> Iterator[np.ndarray]:
    """Yield the blended softmax of `image`, float32 `(rows, W, C)`, band by band.

    `model` maps float32 windows `(B, tile, tile, 3)` in [0, 255] to logits
    `(B, tile, tile, C)` (a Keras model, a `common.exported.ExportedModel`);
    it is called on `tile_batch_size` windows at a time. Windows go row by
    row, and the rows above the next row of windows are final: they are
    yielded and dropped. So the sums kept are one window tall, float32
    `(tile, W, C)`, whatever the image's height. A side shorter than `tile`
    is padded with the mean (`pad_value`, one value per image channel) to
    a multiple of `size_divisor`, as without tiles. The bands, stacked, are
    `(H, W, C)`.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    padded = [
        length if length >= tile else round_up(length, size_divisor)
        for length in (height, width)
    ]
    if padded != [height, width]:
        image = np.asarray(
            pad_image(image.astype(np.float32), *padded, (height, width), np, pad_value)
        )
    tile_height, tile_width = min(tile, padded[0]), min(tile, padded[1])
    weights = tile_weights(tile_height, tile_width, tile_blend)
    tops = tile_starts(padded[0], tile_height, tile_overlap)
    lefts = tile_starts(padded[1], tile_width, tile_overlap)
    windows = [(top, left) for top in tops for left in lefts]

    # Weighted softmax sums and weight sums for rows `first` .. `first + tile_height`.
    first = 0
    sums = None  # float32 (tile_height, padded width, C), once C is known.
    weight_sums = np.zeros((tile_height, padded[1]), np.float32)
    for start in range(0, len(windows), tile_batch_size):
        batch = windows[start : start + tile_batch_size]
        tiles = np.stack(
            [
                image[top : top + tile_height, left : left + tile_width]
                for top, left in batch
            ]
        ).astype(np.float32)  # (B, tile, tile, channels)
        logits = tf.cast(model(tiles), tf.float32)  # (B, tile, tile, C)
        probabilities = tf.nn.softmax(logits).numpy()
        if sums is None:
            sums = np.zeros((tile_height, padded[1], logits.shape[-1]), np.float32)
        for (top, left), window in zip(batch, probabilities):
            if top > first:  # A new row of windows: the rows above it are final.
                done = top - first
                yield (sums[:done] / weight_sums[:done, :, None])[:, :width]
                sums[:-done], weight_sums[:-done] = sums[done:], weight_sums[done:]
                sums[-done:], weight_sums[-done:] = 0, 0
                first = top
            sums[top - first :, left : left + tile_width] += window * weights[..., None]
            weight_sums[top - first :, left : left + tile_width] += weights
    rows = height - first  # The last band: the padding below the image left out.
    yield (sums[:rows] / weight_sums[:rows, :, None])[:, :width]


def predict_tiled(
    model: Callable, image: np.ndarray, tile: int, **settings
) -> np.ndarray:
    """Softmax `(H, W, C)` float32 of one `(H, W, 3)` image in [0, 255], by windows.

    `settings`: those of `tiled_probability_bands`. Memory: the output, plus
    one band of sums and one batch of windows through the network.
    """
    image = np.asarray(image)
    probabilities, row = None, 0
    for band in tiled_probability_bands(model, image, tile, **settings):
        if probabilities is None:
            probabilities = np.empty(
                (len(image), band.shape[1], band.shape[2]), np.float32
            )
        probabilities[row : row + len(band)] = band
        row += len(band)
    return probabilities


def predict_tiled_labels(
    model: Callable, image: np.ndarray, tile: int, **settings
) -> np.ndarray:
    """Class index per pixel, uint8 `(H, W)`, by windows.

    Each band's argmax is taken as it completes, so the softmax of the whole
    image, `H * W * C` float32 (2 GB for 6000 x 4000 and 21 classes), is
    never held: memory is the labels plus one band.
    """
    bands = tiled_probability_bands(model, image, tile, **settings)
    return np.concatenate([to_numpy_labels(band) for band in bands])


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
