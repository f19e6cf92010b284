"""Shared fixtures: small datasets written on the fly, and the real VOC sample."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from common import shapes
from common.voc import CAMVID_CLASSES, CAMVID_VOID, voc_colormap

VOC_SAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "voc_sample", "VOC2012"
)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """A tiny `shapes` dataset in the VOC layout: 24 train and 8 val images."""
    return shapes.generate_shapes(
        str(tmp_path_factory.mktemp("shapes")), num_train=24, num_val=8, seed=1
    )


@pytest.fixture()
def communicate_or_dump_stacks():
    """`(process, timeout) -> (stdout, stderr)`: a script's output once it ends;
    if it has not ended in time, the test fails with every thread's stack.

    The training scripts print their stacks on SIGUSR1 (`common.stops`).
    """

    def communicate(process, timeout: float) -> tuple[str, str]:
        try:
            return process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)
            time.sleep(3)
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"still running after {timeout} s:\n{stderr[-6000:]}")

    return communicate


@pytest.fixture()
def voc_sample_dir() -> str:
    """The 40 real VOC 2012 pairs beside the checkout; skips when absent."""
    if not os.path.isdir(VOC_SAMPLE):
        pytest.skip("../shared/data/voc_sample is not present")
    return VOC_SAMPLE


def _save_palette_png(path: str, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    image.save(path)


@pytest.fixture()
def write_voc(tmp_path):
    """Return `write(splits) -> data_dir` that lays out a VOC folder in tmp_path.

    `splits` maps split name -> {image_id: (image uint8 (H, W, 3), mask (H, W))}.
    Images are written losslessly (PNG bytes under the .jpg name; both
    TensorFlow and PIL read by content), so tests can compare pixels exactly.
    """

    def write(splits: dict) -> str:
        root = tmp_path / "VOC2012"
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for split, examples in splits.items():
            for image_id, (image, mask) in examples.items():
                Image.fromarray(image).save(
                    root / "JPEGImages" / f"{image_id}.jpg", "PNG"
                )
                _save_palette_png(
                    str(root / "SegmentationClass" / f"{image_id}.png"), mask
                )
            split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            split_file.write_text("\n".join(examples) + "\n")
        return str(root)

    return write


# --------------------------------------------------------------------------
# A tiny CamVid: SPLIT/ + SPLITannot/, single-channel index masks, 11 = void
# --------------------------------------------------------------------------


def write_camvid_split(data_dir: str, split: str, count: int, seed: int) -> None:
    """Images of 45x61 (odd, like CamVid's pooled sizes) with blocky classes.

    Each 9x10 block has one class and that class's colour plus noise, so the
    task is learnable in a few steps; a void (11) stripe crosses every image.
    """
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (len(CAMVID_CLASSES), 3))
    os.makedirs(os.path.join(data_dir, split))
    os.makedirs(os.path.join(data_dir, f"{split}annot"))
    for index in range(count):
        # Class 0 dominates so that median-frequency weights differ from 1.
        blocks = rng.choice(len(CAMVID_CLASSES), (5, 7), p=[0.5] + [0.05] * 10)
        mask = np.kron(blocks, np.ones((9, 10), np.uint8))[:45, :61]
        mask = np.pad(mask, ((0, 0), (0, 61 - mask.shape[1])), mode="edge")
        image = colors[mask] + rng.normal(0, 10, (*mask.shape, 3))
        mask = mask.astype(np.uint8)
        mask[20:23] = CAMVID_VOID
        name = f"{split}_{index:03d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(data_dir, split, f"{name}.png")
        )
        Image.fromarray(mask, mode="L").save(
            os.path.join(data_dir, f"{split}annot", f"{name}.png")
        )


@pytest.fixture(scope="session")
def camvid_dir(tmp_path_factory) -> str:
    """A tiny CamVid in the SegNet layout: 8 train and 4 val images, void 11."""
    data_dir = str(tmp_path_factory.mktemp("CamVid"))
    write_camvid_split(data_dir, "train", 8, seed=0)
    write_camvid_split(data_dir, "val", 4, seed=1)
    return data_dir
