"""Joint image/mask geometry for training and evaluation, written once.

Every random draw is made once and applied to the image *and* its mask, so the
two never drift apart. Masks are only ever sampled by nearest neighbour and
padded with 255 (void), so augmentation cannot invent a label value that was
not in the mask: the padding is simply not scored.

The same code runs in two places. The `tf.data` pipeline (`common.voc`)
calls it one image at a time on the CPU with TensorFlow's NumPy API,
`tf.experimental.numpy`, which runs inside a `tf.data` graph whatever the
Keras backend; the dataset cache (`common.cache`) calls it for a whole batch
on the accelerator with `keras.ops`, where there may be no TensorFlow at all.
Both follow NumPy, so each function takes the one to use as `xp`, and the
random draws come in as numbers in [0, 1) from whichever generator the caller
has.

DeepLab's random scale, pad to the crop, random crop and left-right flip are
one affine map from each output pixel back to the stored image, so an image
is resampled by one gather, whatever its scale: bilinearly with half-pixel
centres (as `tf.image.resize`), masks by nearest neighbour (as
`tf.image.resize(method="nearest")`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.constants import IGNORE_LABEL, IMAGE_MEAN

DRAWS = 4  # Per image: scale, crop row, crop column, flip.


def random_scale_crop_flip(
    images: Any,
    masks: Any,
    size: tuple[Any, Any],
    draws: Any,
    crop_size: int,
    scale_range: tuple[float, float],
    pad_value: Sequence[float],
    xp: Any,
) -> tuple[Any, Any]:
    """DeepLab's training augmentation, drawn once per image for image and mask.

    1. scale by one factor from `scale_range` (image bilinear, mask nearest);
    2. pad up to `crop_size` (image with `pad_value`, the mean, mask with 255);
    3. crop one random `crop_size` x `crop_size` window;
    4. flip left-right with probability 1/2.

    images: uint8 or float `(B, H, W, bands)`, bands = `len(pad_value)`;
    masks: integer `(B, H, W)`; size: `(H, W)`, ints or, in a `tf.data`
    graph where only the run knows them, int32 scalar tensors; draws: float32
    `(B, DRAWS)` uniform in [0, 1). Returns float32 `(B, crop, crop, bands)`
    and int32 `(B, crop, crop)`.
    """
    height, width = (xp.array(length, "float32") for length in size)
    low, high = scale_range
    scales = low + draws[:, 0] * (high - low)
    # Rounded half up: a scaled size is rarely a tie, and tf.experimental.numpy
    # has no round without NumPy behaviour switched on.
    scaled_height = xp.floor(height * scales + 0.5)[:, None]  # (B, 1)
    scaled_width = xp.floor(width * scales + 0.5)[:, None]
    top = xp.floor(
        draws[:, 1:2] * (xp.maximum(scaled_height, crop_size) - crop_size + 1)
    )
    left = xp.floor(
        draws[:, 2:3] * (xp.maximum(scaled_width, crop_size) - crop_size + 1)
    )
    steps = xp.arange(crop_size, dtype="float32")
    flips = draws[:, 3:4] < 0.5
    rows = top + steps  # (B, crop): rows of the scaled image.
    cols = left + xp.where(flips, crop_size - 1 - steps, steps)
    inside = (rows < scaled_height)[:, :, None] & (cols < scaled_width)[:, None, :]

    flat_images = xp.reshape(images, (-1, len(pad_value)))
    flat_masks = xp.reshape(masks, (-1,))
    first = xp.arange(images.shape[0], dtype="int32")[:, None, None] * size[0]

    def gather(flat, y, x):  # (B, crop, crop[, bands]) at whole-pixel y, x.
        y, x = xp.array(y, "int32"), xp.array(x, "int32")
        return xp.take(
            flat, ((first + y[:, :, None]) * size[1] + x[:, None, :]), axis=0
        )

    y0, y1, wy = _bilinear_taps(rows, scaled_height, height, xp)
    x0, x1, wx = _bilinear_taps(cols, scaled_width, width, xp)
    wy, wx = wy[:, :, None, None], wx[:, None, :, None]

    def tap(y, x):
        return xp.array(gather(flat_images, y, x), "float32")

    sampled = (tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx) * (1 - wy) + (
        tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
    ) * wy
    labels = gather(
        flat_masks,
        _nearest(rows, scaled_height, height, xp),
        _nearest(cols, scaled_width, width, xp),
    )
    pad = xp.array(pad_value, "float32")
    images = xp.where(inside[..., None], sampled, pad)
    return images, xp.where(inside, xp.array(labels, "int32"), IGNORE_LABEL)


def _bilinear_taps(positions, scaled, length, xp):
    """The two source pixels of each position and the weight of the second.

    Half-pixel centres, clamped at the border, as `tf.image.resize` samples.
    """
    source = xp.clip((positions + 0.5) * (length / scaled) - 0.5, 0, length - 1)
    first = xp.floor(source)
    return first, xp.minimum(first + 1, length - 1), source - first


def _nearest(positions, scaled, length, xp):
    """`tf.image.resize(method="nearest")`'s source pixel (half-pixel centres)."""
    return xp.clip(xp.floor((positions + 0.5) * (length / scaled)), 0, length - 1)


def pad_image(
    image: Any,
    height: Any,
    width: Any,
    size: tuple[Any, Any],
    xp: Any,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> Any:
    """Pad float images `(..., h, w, bands)` at the bottom/right to (height, width).

    `size` is `(h, w)`; `pad_value` has one value per band: `IMAGE_MEAN` for
    RGB, the training images' band means otherwise
    (`common.voc.ImageFormat.pad_value`).
    """
    lead = [[0, 0]] * (len(image.shape) - 3)
    paddings = lead + [[0, height - size[0]], [0, width - size[1]], [0, 0]]
    mean = xp.array(pad_value, "float32")
    return xp.pad(image - mean, paddings, mode="constant") + mean


def pad_mask(mask: Any, height: Any, width: Any, size: tuple[Any, Any], xp: Any) -> Any:
    """Pad int32 masks `(..., h, w)` at the bottom/right to (height, width), void."""
    lead = [[0, 0]] * (len(mask.shape) - 2)
    paddings = lead + [[0, height - size[0]], [0, width - size[1]]]
    return xp.pad(mask, paddings, mode="constant", constant_values=IGNORE_LABEL)


def center_crop(mask: Any, margin: int) -> Any:
    """Remove `margin` pixels from every side of `(..., H, W)` masks."""
    return mask[..., margin:-margin, margin:-margin] if margin else mask


def pad_for_evaluation(
    images: Any,
    masks: Any,
    size: tuple[Any, Any],
    input_size: tuple[int, int],
    xp: Any,
    label_margin: int = 0,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tuple[Any, Any]:
    """Pad images to the fixed evaluation size, keeping every original pixel.

    images `(..., h, w, bands)` (`size` is `(h, w)`) become float32
    `input_size` (mirrored outwards by `label_margin` first, then padded with
    `pad_value`, the mean, at the bottom/right); masks become int32
    `input_size` minus the margins, padded with 255, so that they line up
    with a network output that is `2 * label_margin` smaller than its input.
    """
    images = xp.array(images, "float32")
    if label_margin:
        lead = [[0, 0]] * (len(images.shape) - 3)
        margins = lead + [[label_margin, label_margin]] * 2 + [[0, 0]]
        images = xp.pad(images, margins, mode="reflect")
    height, width = input_size
    margin = 2 * label_margin
    mirrored = (size[0] + margin, size[1] + margin)
    images = pad_image(images, height, width, mirrored, xp, pad_value)
    masks = pad_mask(
        xp.array(masks, "int32"), height - margin, width - margin, size, xp
    )
    return images, masks
