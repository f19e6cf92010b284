"""`shapes`: a small synthetic segmentation dataset in the PASCAL VOC layout.

It exists so that every script, notebook and test runs on a fresh machine with
nothing downloaded, through exactly the same reading code as VOC: JPEG images,
palette PNG masks, `ImageSets/Segmentation/{train,val,trainval}.txt`.

It is a real segmentation task, not a colour lookup. Each 64x64 image shows
a few objects on a dim, nearly grey, blotchy background. Every object has a
random saturated colour, so a pixel's colour tells object from
background but never which object it is: the five classes (circle, square,
triangle, star, cross) are told apart by **shape** alone, which a per-pixel
model cannot see (`tests/test_shapes_dataset.py` trains one to show it).
Objects do not overlap, sit mostly inside the image with random size and
rotation, and are outlined by a void (255) band as VOC objects are.

    python -m common.shapes data/shapes   # generate (a few seconds)
"""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
from PIL import Image

from common.constants import IGNORE_LABEL
from common.voc import voc_colormap

SHAPES_CLASSES = ("background", "circle", "square", "triangle", "star", "cross")
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "shapes")
IMAGE_SIZE = 64  # Pixels a side: small enough to train in minutes on a CPU.
_VERSION = 4  # Bump when the generator changes, so old folders are rebuilt.


def _polygon(kind: str, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Corner points of a square, triangle, star or cross, rotated by `angle`."""
    if kind == "square":
        radii, angles = [radius] * 4, np.arange(4) * np.pi / 2 + np.pi / 4
    elif kind == "triangle":
        radii, angles = [radius * 1.2] * 3, np.arange(3) * 2 * np.pi / 3
    elif kind == "star":
        radii = [radius * 1.2, radius * 0.5] * 5
        angles = np.arange(10) * np.pi / 5
    else:  # "cross": a plus sign with arms a third of its width.
        a, b = radius, radius / 3
        corners = np.array(
            [
                (b, a),
                (b, b),
                (a, b),
                (a, -b),
                (b, -b),
                (b, -a),
                (-b, -a),
                (-b, -b),
                (-a, -b),
                (-a, b),
                (-b, b),
                (-b, a),
            ]
        )
        radii = np.hypot(corners[:, 0], corners[:, 1])
        angles = np.arctan2(corners[:, 1], corners[:, 0])
    angles = np.asarray(angles) + angle
    points = center + np.stack([np.cos(angles), np.sin(angles)], -1) * np.c_[radii]
    return np.round(points).astype(np.int32)


def _shape_mask(
    kind: str, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A boolean mask of one object, mostly inside the image, sometimes cut by it."""
    mask = np.zeros((height, width), np.uint8)
    radius = rng.uniform(0.15, 0.28) * min(height, width)
    center = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height])
    if kind == "circle":
        cv2.circle(mask, tuple(int(c) for c in center), int(radius), 1, thickness=-1)
    else:
        points = _polygon(kind, center, radius, rng.uniform(0, 2 * np.pi))
        cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A dim, nearly grey, blotchy background, float32 `(H, W, 3)` in [0, 255].

    Objects are saturated and the background is not, so a pixel's colour says
    "object or not" but never which object: that takes its shape.
    """
    grey = rng.uniform(40, 170) + rng.uniform(-12, 12, 3)
    noise = rng.uniform(-1, 1, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
    blotches = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return (grey + rng.uniform(10, 30) * blotches[..., None]).astype(np.float32)


def _object_color(rng: np.random.Generator) -> np.ndarray:
    """A random saturated colour (any hue), float32 RGB in [0, 255]."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(140, 255)]]],
        np.uint8,
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _overlaps(label: np.ndarray, shape: np.ndarray) -> bool:
    """True if `shape` touches an object already drawn (or its void outline)."""
    grown = cv2.dilate(shape.astype(np.uint8), np.ones((5, 5), np.uint8))
    return bool(np.any(label[grown.astype(bool)] > 0))


def make_example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 `(H, W, 3)`) and its mask (uint8 `(H, W)`, 255 = void)."""
    height = width = IMAGE_SIZE
    image = _background(height, width, rng)
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(3, 7)):  # Attempts; overlapping ones are skipped.
        class_index = int(rng.integers(1, len(SHAPES_CLASSES)))
        shape = _shape_mask(SHAPES_CLASSES[class_index], height, width, rng)
        if _overlaps(label, shape):
            continue
        image[shape] = _object_color(rng)
        label[shape] = class_index
    # VOC outlines objects with a void band.
    kernel = np.ones((3, 3), np.uint8)
    border = np.zeros_like(label, bool)
    for class_index in np.unique(label[label > 0]):
        region = (label == class_index).astype(np.uint8)
        border |= cv2.morphologyEx(region, cv2.MORPH_GRADIENT, kernel).astype(bool)
    label[border] = IGNORE_LABEL
    image = cv2.GaussianBlur(image, (3, 3), 0) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write_example(
    data_dir: str, name: str, image: np.ndarray, label: np.ndarray
) -> None:
    Image.fromarray(image).save(
        os.path.join(data_dir, "JPEGImages", f"{name}.jpg"), quality=92
    )
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(voc_colormap().ravel().tolist())
    mask.save(os.path.join(data_dir, "SegmentationClass", f"{name}.png"))


def is_shapes_dir(data_dir: str) -> bool:
    """True if `data_dir` holds a generated `shapes` dataset (of any size)."""
    return os.path.isfile(os.path.join(data_dir, "shapes.json"))


def generate_shapes(
    data_dir: str = DEFAULT_DIR,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
) -> str:
    """Write the dataset to `data_dir` (VOC layout) unless it is already there.

    A `shapes.json` stamp records the arguments; a folder made with other
    arguments is rewritten. Returns `data_dir`.
    """
    stamp = {
        "version": _VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
    }
    stamp_path = os.path.join(data_dir, "shapes.json")
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return data_dir
    for folder in (
        "JPEGImages",
        "SegmentationClass",
        os.path.join("ImageSets", "Segmentation"),
    ):
        os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"shapes_{i:05d}" for i in range(num_train + num_val)]
    for name in names:
        _write_example(data_dir, name, *make_example(rng))
    splits = {"train": names[:num_train], "val": names[num_train:], "trainval": names}
    for split, split_names in splits.items():
        with open(
            os.path.join(data_dir, "ImageSets", "Segmentation", f"{split}.txt"), "w"
        ) as f:
            f.write("\n".join(split_names) + "\n")
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return data_dir


if __name__ == "__main__":
    print(generate_shapes(*sys.argv[1:2]))
