"""`common.augment`'s joint image/mask geometry in `keras.ops`, for a whole batch.

The `tf.data` pipeline augments one image at a time on the CPU. On a GPU the
same recipe runs on the device, for the batch at once: DeepLab's random
scale, pad to the crop, random crop and left-right flip are one affine map
from each output pixel back to the stored image, so every image of the batch
is resampled by one gather, whatever its scale. Images are sampled
bilinearly (half-pixel centres, as `tf.image.resize`), masks by nearest
neighbour, so no label value is invented; what falls outside the scaled
image is the mean pixel and void (255), as `common.augment` pads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from common.constants import IGNORE_LABEL


def random_scale_crop_flip(
    images,
    masks,
    crop_size: int,
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    pad_value: Sequence[float],
):
    """DeepLab's training augmentation for a batch, drawn per image from `rng`.

    images: uint8 or float `(B, H, W, bands)`; masks: `(B, H, W)`. Each image
    is scaled by its own factor from `scale_range` (size rounded as
    `common.augment` rounds it), then a `crop_size` window is taken at a
    random place of the scaled image padded up to the crop, then flipped
    left-right with probability 1/2. Returns float32 `(B, crop, crop, bands)`
    and int32 `(B, crop, crop)`.
    """
    batch, height, width = masks.shape
    scales = rng.uniform(*scale_range, batch)
    scaled = np.stack([np.round(height * scales), np.round(width * scales)], 1).astype(
        int
    )
    room = np.maximum(scaled, crop_size) - crop_size + 1  # Window positions.
    corners = (rng.random((batch, 2)) * room).astype(int)
    flips = rng.random(batch) < 0.5
    steps = np.arange(crop_size)
    rows = corners[:, :1] + steps  # (B, crop): rows of the scaled image
    cols = corners[:, 1:] + np.where(flips[:, None], steps[::-1], steps)
    return resample(images, masks, rows, cols, scaled, pad_value)


def resample(images, masks, rows, cols, scaled, pad_value: Sequence[float]):
    """Sample rows x cols of each image as if it were resized to `scaled`.

    rows, cols: int `(B, n)` positions in the resized image (numpy); scaled:
    int `(B, 2)` the resized heights and widths. Positions past the resized
    image get `pad_value` and void.
    """
    batch, height, width = masks.shape
    y0, y1, wy = _bilinear_taps(rows, scaled[:, :1], height)
    x0, x1, wx = _bilinear_taps(cols, scaled[:, 1:], width)
    flat_images = ops.reshape(images, (batch * height * width, -1))

    def taps(y, x):  # (B, n_rows, n_cols, bands), float32
        index = (np.arange(batch)[:, None, None] * height + y[:, :, None]) * width
        index = ops.convert_to_tensor((index + x[:, None, :]).astype("int32"))
        return ops.cast(ops.take(flat_images, index, axis=0), "float32")

    wy = ops.convert_to_tensor(wy[:, :, None, None].astype("float32"))
    wx = ops.convert_to_tensor(wx[:, None, :, None].astype("float32"))
    top = taps(y0, x0) * (1 - wx) + taps(y0, x1) * wx
    bottom = taps(y1, x0) * (1 - wx) + taps(y1, x1) * wx
    sampled = top * (1 - wy) + bottom * wy

    nearest_y = _nearest(rows, scaled[:, :1], height)
    nearest_x = _nearest(cols, scaled[:, 1:], width)
    index = (np.arange(batch)[:, None, None] * height + nearest_y[:, :, None]) * width
    index = (index + nearest_x[:, None, :]).astype("int32")
    labels = ops.take(ops.reshape(masks, (-1,)), ops.convert_to_tensor(index), axis=0)

    inside = (rows < scaled[:, :1])[:, :, None] & (cols < scaled[:, 1:])[:, None, :]
    inside = ops.convert_to_tensor(inside)
    pad = ops.convert_to_tensor(np.asarray(pad_value, "float32"))
    images = ops.where(inside[..., None], sampled, pad)
    masks = ops.where(inside, ops.cast(labels, "int32"), IGNORE_LABEL)
    return images, masks


def _bilinear_taps(positions, scaled, size: int):
    """The two source pixels and the weight of the second, half-pixel centres."""
    source = (positions + 0.5) * (size / scaled) - 0.5
    source = np.clip(source, 0, size - 1)
    first = np.floor(source).astype(int)
    return first, np.minimum(first + 1, size - 1), source - first


def _nearest(positions, scaled, size: int):
    """`tf.image.resize(method="nearest")`'s source pixel (half-pixel centres)."""
    return np.clip(np.floor((positions + 0.5) * (size / scaled)), 0, size - 1).astype(
        int
    )


def pad_for_evaluation(
    images,
    masks,
    input_size: tuple[int, int],
    label_margin: int,
    pad_value: Sequence[float],
):
    """`common.augment.pad_for_evaluation` for a whole split at once.

    images `(N, H, W, bands)` become float32 `input_size`, mirrored outwards
    by `label_margin` then padded with `pad_value` at the bottom and right;
    masks become int32 `input_size` minus the margins, padded with void.
    """
    height, width = input_size
    images = ops.cast(images, "float32")
    if label_margin:
        margin = [[0, 0], [label_margin] * 2, [label_margin] * 2, [0, 0]]
        images = ops.pad(images, margin, mode="reflect")
    pad = ops.convert_to_tensor(np.asarray(pad_value, "float32"))
    padded_images = ops.pad(
        images - pad,
        [[0, 0], [0, height - images.shape[1]], [0, width - images.shape[2]], [0, 0]],
    )
    masks = ops.cast(masks, "int32")
    rows, cols = height - 2 * label_margin, width - 2 * label_margin
    padded_masks = ops.pad(
        masks,
        [[0, 0], [0, rows - masks.shape[1]], [0, cols - masks.shape[2]]],
        constant_values=IGNORE_LABEL,
    )
    return padded_images + pad, padded_masks
