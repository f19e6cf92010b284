"""Turn SBD's .mat class masks into VOC's `train_aug` split (10,582 images).

    python data/sbd_to_aug.py data/benchmark_RELEASE/dataset data/VOCdevkit/VOC2012

Writes single-channel class-index PNGs to `VOC2012/SegmentationClassAug/` (VOC's
own annotation where VOC has one, since it marks borders as void; SBD's
elsewhere) and `ImageSets/Segmentation/train_aug.txt` =
VOC train + SBD train + SBD val - VOC val. SBD's own train list overlaps VOC
val; training on those images would inflate validation scores. The DeepLab
papers train on exactly these 10,582 images (Chen et al. 2017, Sec. 4.1).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.io
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.voc import decode_mask  # noqa: E402

TRAIN_AUG_SIZE = 10_582


def read_ids(path: str) -> list[str]:
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def sbd_mask(mat_path: str) -> np.ndarray:
    """SBD's class mask: `GTcls.Segmentation`, uint8 (H, W), 0 = background."""
    ground_truth = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    return np.asarray(ground_truth["GTcls"].Segmentation, np.uint8)


def voc_mask(png_path: str) -> np.ndarray:
    with open(png_path, "rb") as f:
        return decode_mask(f.read(), png_path).numpy()


def convert(sbd_dir: str, voc_dir: str, expected: int = TRAIN_AUG_SIZE) -> list[str]:
    splits = os.path.join(voc_dir, "ImageSets", "Segmentation")
    voc_train, voc_val = (
        read_ids(os.path.join(splits, f"{s}.txt")) for s in ("train", "val")
    )
    sbd_ids = read_ids(os.path.join(sbd_dir, "train.txt"))
    sbd_ids += read_ids(os.path.join(sbd_dir, "val.txt"))
    train_aug = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
    if len(train_aug) != expected:
        raise SystemExit(
            f"error: train_aug has {len(train_aug)} ids, expected {expected}: the "
            "VOC or SBD lists are not the official ones."
        )
    out_dir = os.path.join(voc_dir, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)
    for image_id in train_aug:
        voc_png = os.path.join(voc_dir, "SegmentationClass", f"{image_id}.png")
        if os.path.isfile(voc_png):
            mask = voc_mask(voc_png)
        else:
            mask = sbd_mask(os.path.join(sbd_dir, "cls", f"{image_id}.mat"))
        Image.fromarray(mask, mode="L").save(os.path.join(out_dir, f"{image_id}.png"))
    with open(os.path.join(splits, "train_aug.txt"), "w") as f:
        f.write("\n".join(train_aug) + "\n")
    print(f"train_aug: {len(train_aug)} ids, masks in {out_dir}")
    return train_aug


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sbd_dir", help="benchmark_RELEASE/dataset (has cls/, train.txt)"
    )
    parser.add_argument("voc_dir", help="VOCdevkit/VOC2012")
    parser.add_argument(
        "--expected",
        type=int,
        default=int(os.environ.get("SBD_EXPECTED_IDS", TRAIN_AUG_SIZE)),
        help="ids train_aug must have (default: %(default)s; tests use fewer)",
    )
    args = parser.parse_args(argv)
    convert(args.sbd_dir, args.voc_dir, args.expected)


if __name__ == "__main__":
    main()
