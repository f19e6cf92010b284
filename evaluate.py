"""Score a trained model on every pixel of a split, at each image's own resolution.

    python evaluate.py --model runs/unet-voc-TIME/best.keras
    python evaluate.py --model best.keras --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip

Prints the per-class IoU table, mean IoU and pixel accuracy (void pixels, 255,
excluded), and writes `eval.json` and `confusion_matrix.png` next to the model
(or to `--output-dir`). Mean IoU is computed once from the confusion matrix of
the whole split, as the VOC benchmark does.

Without `--scales`/`--flip`, images are padded in batches exactly as during
training's validation. With them, every image is predicted at each scale (and
mirrored), and the softmax outputs, resized back to the original size, are
averaged: DeepLab's test-time augmentation.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from common import inference, plots, training, voc
from common.metrics import (
    ConfusionMatrix,
    iou_table,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a .keras file saved by training"
    )
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument(
        "--scales",
        default="1.0",
        help="comma-separated test scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="also average left-right mirrored images"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per batch (default: 4)"
    )
    parser.add_argument(
        "--output-dir", help="where eval.json goes (default: the model's folder)"
    )
    training.add_dataset_args(parser)
    return parser


def confusion_plain(model, dataset: voc.DatasetSpec, split: str, batch_size: int):
    """Batched, padded exactly as in training's validation (masks padded with 255)."""
    metric = ConfusionMatrix(dataset.num_classes)
    batches = voc.make_dataset(
        dataset.data_dir,
        split,
        batch_size,
        crop_size=0,  # Only training crops.
        training=False,
        layout=dataset.layout,
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        mask_values=dataset.mask_values,
    )
    for images, masks in batches:
        metric.update_state(masks, model(images, training=False))
    return metric.matrix.numpy()


def confusion_multiscale(
    model,
    dataset: voc.DatasetSpec,
    split: str,
    scales: Sequence[float],
    flip: bool,
):
    """One image at a time: averaged softmax over scales and flips, then argmax."""
    metric = ConfusionMatrix(dataset.num_classes)
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)
    voc.image_sizes(pairs)
    voc.check_mask_values(
        [mask for _, mask in pairs],
        dataset.num_classes,
        dataset.mask_values,
        dataset.ignore_index,
    )
    for image_path, mask_path in pairs:
        image, mask = voc.load_pair(
            image_path,
            mask_path,
            dataset.num_classes,
            dataset.ignore_index,
            dataset.mask_values,
        )
        probabilities = inference.predict_multiscale(model, image, scales, flip)
        metric.update_state(mask[None], probabilities[None])
    return metric.matrix.numpy()


def main(argv: Sequence[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    scales = inference.parse_scales(args.scales)
    dataset = training.resolve_dataset(args)
    model = inference.load_model(args.model)
    inference.check_same_size_output(model)

    try:
        if scales == (1.0,) and not args.flip:
            matrix = confusion_plain(model, dataset, args.split, args.batch_size)
        else:
            matrix = confusion_multiscale(model, dataset, args.split, scales, args.flip)
    except tf.errors.InvalidArgumentError as error:
        raise voc.DatasetError(voc.tf_error_message(error)) from None

    print(iou_table(matrix, dataset.class_names))
    ious = per_class_iou(matrix).numpy()
    results = {
        "model": args.model,
        "split": args.split,
        "scales": list(scales),
        "flip": args.flip,
        "mean_iou": float(mean_iou(matrix)),
        "pixel_accuracy": float(pixel_accuracy(matrix)),
        "per_class_iou": {
            name: None if np.isnan(iou) else float(iou)
            for name, iou in zip(dataset.class_names, ious)
        },
        "confusion_matrix": matrix.tolist(),
    }
    output_dir = args.output_dir or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    plots.plot_confusion_matrix(
        matrix,
        dataset.class_names,
        os.path.join(output_dir, "confusion_matrix.png"),
        title=f"{model.name} on {args.dataset} {args.split}",
    )
    print(f"Wrote eval.json and confusion_matrix.png to {output_dir}")
    return results


if __name__ == "__main__":
    training.run_cli(main)
