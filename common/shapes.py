"""`shapes`: a small synthetic segmentation dataset in the PASCAL VOC layout.

It exists so that every script, notebook and test runs on a fresh machine with
nothing downloaded, through exactly the same reading code as VOC: JPEG images,
palette PNG masks, `ImageSets/Segmentation/{train,val,trainval}.txt`.

It is a real segmentation task, not a colour lookup. Five object classes are
told apart by their **shape** (circle, square, triangle, star, cross) and,
less reliably, their texture: each class prefers one of four textures (flat,
stripes, checks, blotches) 60% of the time, and colours are random. Objects
overlap, run off the image border, sit on low-contrast textured backgrounds,
and are outlined by a void (255) band as VOC objects are. Image sizes vary
from 96 to 160 pixels a side.

    python -m common.shapes data/shapes   # generate (a few seconds)
"""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
from PIL import Image

from common.voc import IGNORE_LABEL, voc_colormap

SHAPES_CLASSES = ("background", "circle", "square", "triangle", "star", "cross")
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "shapes")
_VERSION = 3  # Bump when the generator changes, so old folders are rebuilt.


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
    """A boolean mask of one object, placed anywhere, possibly cut by the border."""
    mask = np.zeros((height, width), np.uint8)
    radius = rng.uniform(0.12, 0.3) * min(height, width)
    center = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height])
    if kind == "circle":
        cv2.circle(mask, tuple(int(c) for c in center), int(radius), 1, thickness=-1)
    else:
        points = _polygon(kind, center, radius, rng.uniform(0, 2 * np.pi))
        cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def _texture(
    height: int, width: int, rng: np.random.Generator, kind: int, contrast: float
) -> np.ndarray:
    """A two-colour texture, float32 `(H, W, 3)` in [0, 255].

    kind: 0 flat, 1 stripes, 2 checks, 3 blotches; `contrast` (0-1) scales the
    difference between the two colours.
    """
    base = rng.uniform(0, 255, 3).astype(np.float32)
    other = rng.uniform(0, 255, 3).astype(np.float32)
    colors = np.stack([base, base + contrast * (other - base)])
    y, x = np.mgrid[:height, :width].astype(np.float32)
    period = rng.uniform(4, 14)
    if kind == 0:  # flat
        mix = np.zeros((height, width), np.float32)
    elif kind == 1:  # stripes at a random angle
        angle = rng.uniform(0, np.pi)
        mix = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 2:  # checks
        mix = ((x // period + y // period) % 2).astype(np.float32)
    else:  # blotchy noise
        noise = rng.uniform(0, 1, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
        mix = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    mix = np.asarray(mix, np.float32)[..., None]
    return colors[0] * (1 - mix) + colors[1] * mix


def make_example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 `(H, W, 3)`) and its mask (uint8 `(H, W)`, 255 = void)."""
    height, width = (int(v) for v in rng.integers(96, 161, size=2))
    # A low-contrast background, so that objects stand out by their edges.
    image = _texture(height, width, rng, int(rng.integers(4)), contrast=0.3)
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(2, 6)):
        class_index = int(rng.integers(1, len(SHAPES_CLASSES)))
        shape = _shape_mask(SHAPES_CLASSES[class_index], height, width, rng)
        # Each class prefers one texture (60%), any colour: a cue, not the answer.
        kind = (class_index - 1) % 4 if rng.uniform() < 0.6 else int(rng.integers(4))
        image[shape] = _texture(height, width, rng, kind, contrast=1.0)[shape]
        label[shape] = class_index
    # VOC outlines objects with a void band; later objects occlude earlier ones.
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
    data_dir: str = DEFAULT_DIR, num_train: int = 240, num_val: int = 60, seed: int = 0
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
