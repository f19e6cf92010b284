"""A dataset as one compact file per split, for training where TensorFlow is not.

    python -m common.cli cache --dataset camvid --out data/camvid-cache
    KERAS_BACKEND=jax python unet_train.py --dataset cache --data-dir data/camvid-cache

The cache is written once, where TensorFlow is installed, by the reader every
training run uses (`voc.make_dataset`'s decoding: palette or index masks,
the dataset's void remapped to 255, every label checked), so all the checks
of the data still apply. Each split becomes `SPLIT.npz`: the images as JPEG
(quality 95; CamVid's train and val together are about 40 MB instead of
120 MB of PNG), the masks as PNG, both lossless where it matters (a mask is
never re-encoded lossily). `dataset.json` names the classes.

Reading it needs numpy, OpenCV and Keras only. The whole split is decoded
into one array on the accelerator; `TrainingBatches` draws each batch there
and augments it there (`common.augment`, in `keras.ops`), `EvaluationBatches` pads each
image to the network's fixed evaluation size as `voc.make_dataset` does.
Both are `keras.utils.PyDataset`s, which `model.fit` takes on any backend.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable, Sequence

import cv2
import keras
import numpy as np
from keras import ops

from common import augment, voc
from common.backend import compiled, tf
from common.constants import IGNORE_LABEL, IMAGE_MEAN
from common.errors import DatasetError

JPEG_QUALITY = 95
SPEC_FILE = "dataset.json"


# --------------------------------------------------------------------------
# Writing (where TensorFlow is installed)
# --------------------------------------------------------------------------


def write_split(dataset: voc.DatasetSpec, split: str, out_dir: str) -> str:
    """Read `split` with the project's reader and store it as `out_dir/SPLIT.npz`."""
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)
    image_paths, mask_paths = (list(column) for column in zip(*pairs))
    voc.check_mask_values(
        mask_paths, dataset.num_classes, dataset.mask_values, dataset.ignore_index
    )
    files = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    examples = files.map(
        lambda image, mask: voc.load_pair(
            image, mask, dataset.num_classes, dataset.ignore_index, dataset.mask_values
        ),
        num_parallel_calls=tf.data.AUTOTUNE,  # as_numpy_iterator keeps the order.
    )
    images, masks = [], []
    for image, mask in examples.as_numpy_iterator():
        images.append(_encode(".jpg", image[..., ::-1], JPEG_QUALITY))
        masks.append(_encode(".png", mask))
    path = os.path.join(out_dir, f"{split}.npz")
    np.savez(
        path,
        names=np.array([os.path.splitext(os.path.basename(p))[0] for p in image_paths]),
        **_packed("images", images),
        **_packed("masks", masks),
    )
    return path


def _encode(extension: str, array: np.ndarray, quality: int | None = None) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(array), flags)
    if not ok:
        raise DatasetError(f"OpenCV could not encode an array as {extension}.")
    return encoded.tobytes()


def _packed(name: str, blobs: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Byte strings as one uint8 array and their end offsets (npz needs no pickle)."""
    return {
        name: np.frombuffer(b"".join(blobs), np.uint8),
        f"{name}_ends": np.cumsum([len(blob) for blob in blobs]),
    }


def write_cache(dataset: voc.DatasetSpec, splits: Sequence[str], out_dir: str) -> None:
    """`SPLIT.npz` for each split and `dataset.json`, printed as they are written."""
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        path = write_split(dataset, split, out_dir)
        print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB")
    with open(os.path.join(out_dir, SPEC_FILE), "w") as spec:
        json.dump({"class_names": list(dataset.class_names)}, spec, indent=1)


# --------------------------------------------------------------------------
# Reading (any backend, no TensorFlow)
# --------------------------------------------------------------------------


def is_cache(data_dir: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, SPEC_FILE))


def dataset_spec(data_dir: str) -> voc.DatasetSpec:
    """The `DatasetSpec` of a cache folder (void is already 255)."""
    if not is_cache(data_dir):
        raise DatasetError(
            f"--data-dir {data_dir}: no {SPEC_FILE} here; write a cache with "
            "python -m common.cli cache --dataset DATASET --out DIR."
        )
    with open(os.path.join(data_dir, SPEC_FILE)) as spec:
        names = tuple(json.load(spec)["class_names"])
    return voc.DatasetSpec(data_dir, "cache", names)


def read_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images `(N, H, W, 3)` RGB, uint8 masks `(N, H, W)`, and the names.

    Images of another size than the first are an error: a cache holds one
    size (CamVid's 360x480).
    """
    path = os.path.join(data_dir, f"{split}.npz")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: this cache has no split {split!r}.")
    with np.load(path) as stored:
        images = _decoded(stored["images"], stored["images_ends"], cv2.IMREAD_COLOR)
        masks = _decoded(stored["masks"], stored["masks_ends"], cv2.IMREAD_UNCHANGED)
        names = [str(name) for name in stored["names"]]
    shapes = {image.shape[:2] for image in images} | {mask.shape for mask in masks}
    if len(shapes) > 1:
        raise DatasetError(f"{path}: images of several sizes {sorted(shapes)}.")
    return np.stack([image[..., ::-1] for image in images]), np.stack(masks), names


def _decoded(blob: np.ndarray, ends: np.ndarray, flag: int) -> list[np.ndarray]:
    starts = np.concatenate([[0], ends[:-1]])
    return [cv2.imdecode(blob[start:end], flag) for start, end in zip(starts, ends)]


class TrainingBatches(keras.utils.PyDataset):
    """Endless augmented training batches, drawn and augmented on the device.

    Every epoch of `steps` batches walks on through a stream of shuffled
    passes over the split (as `voc.make_dataset`'s shuffle and repeat do).
    Each batch's random scale, crop and flip come from `seed` and the batch's
    number, so a run is repeatable; `common.augment` applies them.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        batch_size: int,
        crop_size: int,
        steps: int,
        scale_range: tuple[float, float],
        seed: int = 0,
        label_margin: int = 0,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.images = ops.convert_to_tensor(images)  # On the accelerator, uint8.
        self.masks = ops.convert_to_tensor(masks)
        self.count = len(images)
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.label_margin = label_margin
        self.weights = _weight_table(class_weights)
        self.epoch = 0
        self.augment = compiled(  # One program a batch, not ~50 dispatches.
            functools.partial(
                augment.random_scale_crop_flip,
                size=tuple(masks.shape[1:]),
                crop_size=crop_size,
                scale_range=scale_range,
                pad_value=IMAGE_MEAN,
                xp=ops,
            )
        )

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def image_ids(self, batch: int) -> np.ndarray:
        """The images of the run's `batch`-th batch: the next ones of the stream."""
        first = batch * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        passes = positions // self.count
        order = {
            p: np.random.default_rng([self.seed, p]).permutation(self.count)
            for p in np.unique(passes)
        }
        return np.array([order[p][i % self.count] for p, i in zip(passes, positions)])

    def __getitem__(self, index: int):
        if index >= self.steps:
            raise IndexError(index)
        batch = self.epoch * self.steps + index
        rng = np.random.default_rng([self.seed, batch, 1])
        ids = ops.convert_to_tensor(self.image_ids(batch).astype("int32"))
        draws = rng.random((self.batch_size, augment.DRAWS), np.float32)
        images, masks = self.augment(
            ops.take(self.images, ids, axis=0),
            ops.take(self.masks, ids, axis=0),
            draws=ops.convert_to_tensor(draws),
        )
        masks = augment.center_crop(masks, self.label_margin)
        return _with_weights(images, masks, self.weights)


class EvaluationBatches(keras.utils.PyDataset):
    """Validation batches: every image padded to one fixed size, as `voc` does.

    The image is mirrored outwards by `label_margin` (valid U-Net) and padded
    at the bottom and right with the mean pixel, the mask with void, up to
    `input_size_rule` of the split's size. The last batch is filled with
    all-void copies so that every batch has one shape (JAX compiles one step
    per shape); they add nothing to the confusion matrix. `names` and `sizes`
    are each image's, for `predictions.png`.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        names: Sequence[str],
        batch_size: int,
        input_size_rule: Callable[[int], int] = voc.round_up,
        label_margin: int = 0,
    ):
        super().__init__()
        count, height, width = masks.shape
        self.names = list(names)
        self.sizes = [(height, width)] * count
        self.batch_size = batch_size
        self.count = count
        input_size = (
            input_size_rule(height + 2 * label_margin),
            input_size_rule(width + 2 * label_margin),
        )
        self.images, self.masks = augment.pad_for_evaluation(
            ops.convert_to_tensor(images),
            ops.convert_to_tensor(masks),
            (height, width),
            input_size,
            ops,
            label_margin,
            IMAGE_MEAN,
        )

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __getitem__(self, index: int):
        if index >= len(self):
            raise IndexError(index)
        start = index * self.batch_size
        ids = np.arange(start, start + self.batch_size)
        ids = ops.convert_to_tensor(np.minimum(ids, self.count - 1).astype("int32"))
        masks = ops.take(self.masks, ids, axis=0)
        filler = ops.reshape(
            ops.arange(start, start + self.batch_size) >= self.count, (-1, 1, 1)
        )
        masks = ops.where(filler, IGNORE_LABEL, masks)
        return ops.take(self.images, ids, axis=0), masks


def _weight_table(class_weights: Sequence[float] | None):
    if class_weights is None:
        return None
    table = np.zeros(256, np.float32)  # Void (255) and unused values weigh 0.
    table[: len(class_weights)] = class_weights
    return ops.convert_to_tensor(table)


def _with_weights(images, masks, table):
    if table is None:
        return images, masks
    return images, masks, ops.take(table, masks)


def make_datasets(
    images: np.ndarray,
    masks: np.ndarray,
    data_dir: str,
    args: argparse.Namespace,
    steps: int,
    input_size_rule: Callable[[int], int] = voc.round_up,
    label_margin: int = 0,
) -> tuple[TrainingBatches, EvaluationBatches]:
    """`training.make_datasets`'s batches for a cache: training and validation.

    images, masks: the training split (`read_split`), already read by the
    caller to count it and its classes; the validation split is read here.
    """
    if args.image_scale != 1:
        raise DatasetError(
            "--image-scale: a cache holds one size; write it from resized images."
        )
    batch_size = args.global_batch_size
    train = TrainingBatches(
        images,
        masks,
        batch_size,
        args.crop_size,
        steps,
        tuple(args.scale_range),
        args.seed,
        label_margin,
        args.class_weights,
    )
    val = EvaluationBatches(
        *read_split(data_dir, args.val_split),
        batch_size,
        input_size_rule,
        label_margin,
    )
    return train, val
