"""Score a trained model on every pixel of a split, at each image's own resolution.

    python evaluate.py --model runs/unet-shapes-TIME/best.keras
    python evaluate.py --model best.keras --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip
    python evaluate.py --model best.keras --crf --trimap 4,8,16

The dataset, its folder, class names, void value and validation split come from
the `results.json` that training wrote beside the model; data flags override
them (runs saved before that entry existed need them, else VOC is assumed).

Prints the per-class IoU table, mean IoU and pixel accuracy (void pixels, 255,
excluded), and writes `eval.json` and `confusion_matrix.png` next to the model
(or to `--output-dir`). Mean IoU is computed once from the confusion matrix of
the whole split, as the VOC benchmark does.

Without `--scales`/`--flip`/`--crf`/`--trimap`, images are padded in batches
exactly as during training's validation. With them, every image is predicted on
its own: at each scale (and mirrored), the softmax outputs, resized back to the
original size, are averaged (DeepLab's test-time augmentation); `--crf` then
refines that average with the fully connected CRF (DeepLab v1/v2, see
`common/crf.py`), and both results are scored side by side. `--trimap 4,8,16`
also scores only the pixels within 4, 8 and 16 pixels of a ground-truth
boundary, where the CRF's gain shows (DeepLab v2, Fig. 5).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import numpy as np
import tensorflow as tf

from common import cli, crf, inference, plots, results, voc
from common.constants import IGNORE_LABEL
from common.errors import DatasetError, InputError
from common.metrics import ConfusionMatrix, iou_table, mean_iou, trimap_mask

# The data flags' defaults when neither they nor the run's results.json say.
FALLBACK_DATASET = {"dataset": "voc", "ignore_index": IGNORE_LABEL, "split": "val"}


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a .keras file saved by training"
    )
    parser.add_argument(
        "--split",
        help="split to score (default: the run's validation split, else val)",
    )
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
        "--trimap",
        help="comma-separated band widths in pixels, e.g. 4,8,16: also score only "
        "the pixels that close to a ground-truth boundary",
    )
    parser.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=4,
        help="images per batch (default: 4)",
    )
    parser.add_argument(
        "--output-dir", help="where eval.json goes (default: the model's folder)"
    )
    crf.add_crf_args(parser)
    data = cli.add_dataset_args(parser)
    data.description = "default: the run's settings in results.json beside --model"
    # None = not given, so that results.json can fill it in (resolve_dataset).
    parser.set_defaults(dataset=None, ignore_index=None)
    for action in data._group_actions:
        if action.dest in ("dataset", "ignore_index"):
            action.help = action.help.replace("%(default)s", "the run's, else voc")
    return parser


def resolve_dataset(args: argparse.Namespace) -> tuple[voc.DatasetSpec, str]:
    """The dataset to score and a line that says where its settings came from.

    Flags win; what they leave out comes from the training run's results.json,
    unless `--dataset` names another dataset than the run's. Fills in
    `args.dataset`, `args.split` and the other data flags accordingly.
    """
    run, results_path = results.read_run(args.model)
    run = (run or {}).get("dataset")
    given = [
        flag
        for flag, value in (
            ("--dataset", args.dataset),
            ("--data-dir", args.data_dir),
            ("--split", args.split),
            ("--class-names", args.class_names),
            ("--ignore-index", args.ignore_index),
        )
        if value is not None
    ]
    if run is not None and args.dataset in (None, run["name"]):
        args.dataset = run["name"]
        args.data_dir = args.data_dir or run["data_dir"]
        args.class_names = args.class_names or run["class_names"]
        args.num_classes = args.num_classes or len(args.class_names)
        if args.ignore_index is None:
            args.ignore_index = run["ignore_index"]
        args.mask_values = args.mask_values or run.get("mask_values")
        args.split = args.split or run["val_split"]
        source = f"settings from {results_path}" + (
            f" and {', '.join(given)}" if given else ""
        )
    else:
        for name, value in FALLBACK_DATASET.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if not os.path.isfile(results_path):
            reason = f"no results.json beside {args.model}"
        elif run is None:
            reason = f"no dataset entry in {results_path}"
        else:
            reason = f"--dataset differs from {results_path}"
        source = f"settings from the flags and defaults ({reason})"
    dataset = cli.resolve_dataset(args)
    return dataset, (
        f"Scoring {args.dataset} {args.split} in {dataset.data_dir} "
        f"({dataset.num_classes} classes, void {dataset.ignore_index}): {source}"
    )


def parse_trimap(text: str | None) -> tuple[int, ...]:
    """'4,8,16' -> (4, 8, 16); None -> ()."""
    if not text:
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"--trimap {text!r}: expected whole pixel widths like 4,8,16"
        ) from None
    if min(widths) < 1:
        raise InputError(f"--trimap {text!r}: every width must be at least 1")
    return widths


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
    total = -(
        -len(voc.list_pairs(dataset.data_dir, split, dataset.layout)) // batch_size
    )
    for images, masks in inference.with_progress(batches, total, unit="batch"):
        metric.update_state(masks, model(images, training=False))
    return metric.matrix.numpy()


def confusion_per_image(
    model,
    dataset: voc.DatasetSpec,
    split: str,
    scales: Sequence[float],
    flip: bool,
    crf_settings: dict | None = None,
    trimap_widths: Sequence[int] = (),
) -> dict[tuple[str, int | None], np.ndarray]:
    """One image at a time: averaged softmax over scales and flips, then argmax.

    Returns a confusion matrix per (method, band): method "network", and "crf"
    when `crf_settings` are given (the CRF refines the averaged softmax, as in
    DeepLab); band None for every pixel, or a trimap width in pixels.
    """
    methods = ["network"] + (["crf"] if crf_settings is not None else [])
    bands = [None, *trimap_widths]
    metrics = {
        (method, band): ConfusionMatrix(dataset.num_classes)
        for method in methods
        for band in bands
    }
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)
    voc.image_sizes(pairs)
    voc.check_mask_values(
        [mask for _, mask in pairs],
        dataset.num_classes,
        dataset.mask_values,
        dataset.ignore_index,
    )
    for image_path, mask_path in inference.with_progress(pairs, len(pairs)):
        image, mask = voc.load_pair(
            image_path,
            mask_path,
            dataset.num_classes,
            dataset.ignore_index,
            dataset.mask_values,
        )
        image, mask = image.numpy(), mask.numpy()
        probabilities = inference.predict_multiscale(model, image, scales, flip)
        outputs = {"network": probabilities.numpy()}
        if crf_settings is not None:
            outputs["crf"] = crf.dense_crf(image, outputs["network"], **crf_settings)
        masks = {
            band: mask if band is None else trimap_mask(mask, band) for band in bands
        }
        for (method, band), metric in metrics.items():
            metric.update_state(masks[band][None], outputs[method][None])
    return {key: metric.matrix.numpy() for key, metric in metrics.items()}


def trimap_table(matrices: dict, widths: Sequence[int], with_crf: bool) -> str:
    """Mean IoU within each boundary band, with and without the CRF."""
    lines = [
        f"{'trimap band':<14} {'mean IoU':>9}" + ("   with CRF" if with_crf else "")
    ]
    for width in widths:
        line = (
            f"{f'{width} px':<14} {float(mean_iou(matrices['network', width])):>9.1%}"
        )
        if with_crf:
            line += f"   {float(mean_iou(matrices['crf', width])):>8.1%}"
        lines.append(line)
    return "\n".join(lines)


def check_num_classes(model, dataset: voc.DatasetSpec, source: str) -> None:
    predicted = model.output_shape[-1]
    if predicted != dataset.num_classes:
        raise InputError(
            f"{model.name!r} predicts {predicted} classes but the data has "
            f"{dataset.num_classes} ({source}): give the --dataset/--data-dir "
            "it was trained on."
        )


def main(argv: Sequence[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    scales = inference.parse_scales(args.scales)
    trimap_widths = parse_trimap(args.trimap)
    crf_settings = crf.crf_settings(args) if args.crf else None
    if args.crf:
        crf.require_pydensecrf()  # Before the slow part, not after it.
    cli.check_path(args.model, "--model", "file", "a .keras file written by training")
    model = inference.load_model(args.model)
    dataset, source = resolve_dataset(args)
    print(source)
    inference.check_same_size_output(model)
    check_num_classes(model, dataset, source)

    per_image = scales != (1.0,) or args.flip or args.crf or trimap_widths
    try:
        if per_image:
            matrices = confusion_per_image(
                model,
                dataset,
                args.split,
                scales,
                args.flip,
                crf_settings,
                trimap_widths,
            )
        else:
            matrices = {
                ("network", None): confusion_plain(
                    model, dataset, args.split, args.batch_size
                )
            }
    except tf.errors.InvalidArgumentError as error:
        raise DatasetError(voc.tf_error_message(error)) from None

    matrix = matrices["network", None]
    print(iou_table(matrix, dataset.class_names))
    scores = {
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": dataset.data_dir,
        "split": args.split,
        "scales": list(scales),
        "flip": args.flip,
        **results.scores(matrix, dataset.class_names),
    }
    if args.crf:
        scores["crf"] = {
            "settings": crf_settings,
            **results.scores(matrices["crf", None], dataset.class_names),
        }
        print(
            f"mean IoU {scores['mean_iou']:.1%} without CRF, "
            f"{scores['crf']['mean_iou']:.1%} with CRF (pixel accuracy "
            f"{scores['pixel_accuracy']:.1%}, "
            f"{scores['crf']['pixel_accuracy']:.1%})"
        )
    if trimap_widths:
        scores["trimap"] = {}
        for width in trimap_widths:
            band = {"mean_iou": float(mean_iou(matrices["network", width]))}
            if args.crf:
                band["mean_iou_crf"] = float(mean_iou(matrices["crf", width]))
            scores["trimap"][str(width)] = band
        print(trimap_table(matrices, trimap_widths, args.crf))

    output_dir = args.output_dir or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval.json"), "w") as f:
        json.dump(scores, f, indent=2)
    plots.plot_confusion_matrix(
        matrix,
        dataset.class_names,
        os.path.join(output_dir, "confusion_matrix.png"),
        title=f"{model.name} on {args.dataset} {args.split}",
    )
    print(f"Wrote eval.json and confusion_matrix.png to {output_dir}")
    return scores


if __name__ == "__main__":
    cli.run_cli(main)
