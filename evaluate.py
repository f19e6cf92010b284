"""Score a trained model on every pixel of a split, at each image's own resolution.

    python evaluate.py --model runs/unet-shapes-TIME/best.keras
    python evaluate.py --model best.keras --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip
    python evaluate.py --model best.keras --crf --trimap 4,8,16

The dataset, its folder, class names, void value and validation split come from
the `results.json` that training wrote beside the model; data flags override
them (runs saved before that entry existed need them, else VOC is assumed).

Prints the per-class IoU table, mean IoU, and SegNet's global accuracy (share of
pixels right) and class-average accuracy (mean per-class recall), void pixels
(255) excluded, and writes `eval.json` and `confusion_matrix.png` next to the
model (or to `--output-dir`). Mean IoU is computed once from the confusion
matrix of the whole split, as the VOC benchmark does.

A split's mean IoU hides the few images with broken labels or a failure mode,
so every image is also scored on its own, in `per_image.csv`: one row per
image with its mean IoU (over the classes in its labels or prediction), pixel
accuracy, void share (share of its pixels that are void), the IoU of each class
in its labels or prediction (`iou_<class>`, empty for the others) and its path.
An all-void image has nothing to score: its mean IoU and accuracy are empty.
The `--worst 6` images with the lowest mean IoU are listed at the end, kept in
`eval.json` (`worst_images`) and drawn in `worst_images.png` (image, ground
truth, prediction); `--worst 0` turns that off. Scores per image are the
network's, before any `--crf`.

Without `--scales`/`--flip`/`--crf`/`--trimap`, images are padded in batches
exactly as during training's validation. With them, every image is predicted on
its own: at each scale (and mirrored), the softmax outputs, resized back to the
original size, are averaged (DeepLab's test-time augmentation); `--crf` then
refines that average with the fully connected CRF (DeepLab v1/v2, see
`common/crf.py`), and both results are scored side by side. `--trimap 4,8,16`
also scores only the pixels within 4, 8 and 16 pixels of a ground-truth
boundary, where the CRF's gain shows (DeepLab v2, Fig. 5).

`--tile SIZE` also predicts image by image, each in overlapping SIZE x SIZE
windows whose softmax is blended (`--tile-overlap`, `--tile-blend`; see
`common/inference.py`): for images too large to go through the network whole,
and for a model trained on crops, which is then scored at the scale it learnt.
`--tile crop` is that: the run's `--crop-size`, from its `results.json`.

    python evaluate.py --model best.keras --tile crop
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from dataclasses import replace

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import numpy as np

from common import cli, crf, inference, plots, results, voc
from common.backend import tf
from common.constants import IGNORE_LABEL
from common.errors import DatasetError, InputError
from common.metrics import (
    ConfusionMatrix,
    confusion_counts,
    iou_table,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    trimap_mask,
)

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
        help="comma-separated test scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75; the "
        "softmax of each, resized to the full image, is averaged (default: the "
        "training run's --image-scale from results.json, else 1.0)",
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
        "--worst",
        type=cli.non_negative_int,
        default=6,
        metavar="N",
        help="list the N images with the lowest mean IoU and draw them in "
        "worst_images.png; 0: neither (per_image.csv has every image either way; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        help="where eval.json, per_image.csv and the pictures go (default: the "
        "model's folder)",
    )
    crf.add_crf_args(parser)
    cli.add_tile_args(parser)
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
    `args.dataset`, `args.split` and the other data flags accordingly. The
    images are read as the run stored them (its bands and band means, for
    padding: `results.run_image_format`), else as RGB.
    """
    run_results, results_path = results.read_run(args.model)
    run = (run_results or {}).get("dataset")
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
    if run is not None and args.dataset == run["name"]:
        image_format = results.run_image_format(run_results)
        dataset = replace(dataset, image_format=image_format)
    return dataset, (
        f"Scoring {args.dataset} {args.split} in {dataset.data_dir} "
        f"({dataset.num_classes} classes, void {dataset.ignore_index}, "
        f"{dataset.image_format.storage()}): {source}"
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


def _csv_cell(value):
    """A float to 6 decimals, NaN (nothing to score) as an empty cell."""
    if not isinstance(value, float):
        return value
    return "" if np.isnan(value) else f"{value:.6f}"


class ImageScores:
    """Each image's own scores, for per_image.csv, and the worst images' pixels.

    `add` is called once per image, in the split's order. An image's mean IoU
    counts only the classes in its labels or prediction, as
    `results.image_mean_iou` scores the images of a run's predictions.png; it
    and the pixel accuracy are NaN for an all-void image. Only the pixels of
    the `worst` lowest-IoU images so far are kept, so that a split of any size
    fits in memory.
    """

    def __init__(self, class_names: Sequence[str], worst: int):
        self.class_names = list(class_names)
        self.worst = worst
        self.rows: list[dict] = []  # One per image: the columns of per_image.csv.
        self.kept: list[tuple] = []  # (mean IoU, row, image, mask, prediction)

    def add(
        self, image_path: str, image: np.ndarray, mask: np.ndarray, logits: np.ndarray
    ) -> None:
        """image uint8 `(h, w, 3)`; mask `(h, w)`, void 255; logits or softmax
        `(h, w, C)`, at the image's own size."""
        counts = confusion_counts(mask[None], logits[None], len(self.class_names))
        matrix = np.asarray(counts)  # Scored in float64 on every backend.
        ious = per_class_iou(matrix)
        scored = np.sum(matrix) > 0  # Not all void.
        row = {
            "image": os.path.splitext(os.path.basename(image_path))[0],
            "mean_iou": float(mean_iou(matrix)),
            "pixel_accuracy": float(pixel_accuracy(matrix)) if scored else np.nan,
            "void_share": float(np.mean(mask == IGNORE_LABEL)),
            **{f"iou_{name}": float(iou) for name, iou in zip(self.class_names, ious)},
            "image_path": image_path,
        }
        self.rows.append(row)
        if self.worst and scored:
            # Copies: the arrays may be views into a whole batch.
            kept = (np.array(image, np.uint8), np.array(mask, np.uint8))
            prediction = np.argmax(logits, axis=-1).astype(np.uint8)
            self.kept.append((row["mean_iou"], len(self.rows) - 1, *kept, prediction))
            self.kept.sort(key=lambda kept: kept[:2])  # Ties: the split's order.
            del self.kept[self.worst :]

    def worst_rows(self) -> list[dict]:
        """The rows of the `worst` lowest mean IoUs, lowest first."""
        return [self.rows[index] for _, index, *_ in self.kept]

    def write_csv(self, path: str) -> None:
        """per_image.csv: the rows, scores to 6 decimals, empty where NaN."""
        columns = ["image", "mean_iou", "pixel_accuracy", "void_share"]
        columns += [f"iou_{name}" for name in self.class_names] + ["image_path"]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: _csv_cell(value) for key, value in row.items()})

    def worst_table(self) -> str:
        """The worst rows as text, and how many images had nothing to score."""
        lines = [
            f"The {len(self.kept)} lowest mean IoUs of {len(self.rows)} images "
            "(every image: per_image.csv):",
            f"{'mean IoU':>9} {'pixel accuracy':>15} {'void':>6}  image",
        ]
        for row in self.worst_rows():
            lines.append(
                f"{row['mean_iou']:>9.1%} {row['pixel_accuracy']:>15.1%} "
                f"{row['void_share']:>6.1%}  {row['image']}"
            )
        all_void = sum(np.isnan(row["mean_iou"]) for row in self.rows)
        if all_void:
            lines.append(f"Not ranked, all void (nothing to score): {all_void} images")
        return "\n".join(lines)

    def plot_worst(self, out_path: str, title: str) -> None:
        """worst_images.png: image | ground truth | prediction, lowest IoU first."""
        _, indices, images, masks, predictions = zip(*self.kept)
        plots.plot_predictions(
            images,
            masks,
            predictions,
            self.class_names,
            out_path,
            title=title,
            row_titles=[
                f"{self.rows[i]['image']}\nIoU {self.rows[i]['mean_iou']:.2f}"
                for i in indices
            ],
        )


def confusion_plain(
    model,
    dataset: voc.DatasetSpec,
    split: str,
    batch_size: int,
    image_scores: ImageScores | None = None,
):
    """Batched, padded exactly as in training's validation (masks padded with 255).

    Each prediction is cropped back to its image's size and scored there (the
    padding is void, so the split's matrix is the same) and, given
    `image_scores`, on its own.
    """
    metric = ConfusionMatrix(dataset.num_classes)
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)
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
        image_format=dataset.image_format,
    )
    total = -(-len(pairs) // batch_size)
    examples = results.predict_examples(
        model,
        inference.with_progress(batches, total, unit="batch"),
        voc.image_sizes(pairs),
    )
    # strict: one prediction per pair, and the progress bar sees the batches end.
    for (image_path, _), (image, mask, logits) in zip(pairs, examples, strict=True):
        metric.update_state(mask[None], logits[None])
        if image_scores is not None:
            image_scores.add(image_path, image, mask, logits)
    return metric.matrix


def confusion_per_image(
    model,
    dataset: voc.DatasetSpec,
    split: str,
    scales: Sequence[float],
    flip: bool,
    crf_settings: dict | None = None,
    trimap_widths: Sequence[int] = (),
    image_scores: ImageScores | None = None,
    tile_settings: dict | None = None,
) -> dict[tuple[str, int | None], np.ndarray]:
    """One image at a time: averaged softmax over scales and flips, then argmax.

    Returns a confusion matrix per (method, band): method "network", and "crf"
    when `crf_settings` are given (the CRF refines the averaged softmax, as in
    DeepLab); band None for every pixel, or a trimap width in pixels. With
    `tile_settings` (`inference.tile_settings`), each view goes in windows. Given
    `image_scores`, each image's network output is also scored on its own.
    """
    methods = ["network"] + (["crf"] if crf_settings is not None else [])
    bands = [None, *trimap_widths]
    metrics = {
        (method, band): ConfusionMatrix(dataset.num_classes)
        for method in methods
        for band in bands
    }
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)
    voc.image_sizes(pairs, dataset.image_format)
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
            dataset.image_format,
        )
        image, mask = image.numpy(), mask.numpy()
        probabilities = inference.predict_multiscale(
            model,
            image,
            scales,
            flip,
            tile_settings=tile_settings,
            pad_value=dataset.image_format.pad_value,
        )
        outputs = {"network": probabilities.numpy()}
        image = voc.display_rgb(image)  # Other bands: as pictures show them.
        if crf_settings is not None:
            outputs["crf"] = crf.dense_crf(image, outputs["network"], **crf_settings)
        masks = {
            band: mask if band is None else trimap_mask(mask, band) for band in bands
        }
        for (method, band), metric in metrics.items():
            metric.update_state(masks[band][None], outputs[method][None])
        if image_scores is not None:
            image_scores.add(image_path, image, mask, outputs["network"])
    return {key: metric.matrix for key, metric in metrics.items()}


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
    bands = model.input_shape[-1]
    if bands != dataset.image_format.bands:
        raise InputError(
            f"{model.name!r} takes images of {bands} bands but the data is read "
            f"as {dataset.image_format.storage()} ({source}): evaluate it beside "
            "the results.json of its training run, on the data it was trained on."
        )


def main(argv: Sequence[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    scales = inference.parse_scales(args.scales) if args.scales else None
    trimap_widths = parse_trimap(args.trimap)
    crf_settings = crf.crf_settings(args) if args.crf else None
    if args.crf:
        crf.require_pydensecrf()  # Before the slow part, not after it.
    cli.check_path(args.model, "--model", "file", "a .keras file written by training")
    run = results.read_run(args.model)[0]
    scales = inference.scales_for_run(scales, run)
    if args.scales is None and scales != (1.0,):
        print(
            f"Predicting at scale {scales[0]:g} (the run's --image-scale), the "
            "softmax upsampled to the full-size labels"
        )
    model = inference.load_model(args.model)
    dataset, source = resolve_dataset(args)
    print(source)
    inference.check_same_size_output(model)
    check_num_classes(model, dataset, source)
    # A .keras model's input is padded to a multiple of 32, so are its windows.
    tile_settings = inference.tile_settings(
        args, 32, run if args.tile == "crop" else None
    )

    per_image = scales != (1.0,) or args.flip or args.crf or trimap_widths
    per_image = per_image or tile_settings is not None
    image_scores = ImageScores(dataset.class_names, args.worst)
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
                image_scores,
                tile_settings,
            )
        else:
            matrices = {
                ("network", None): confusion_plain(
                    model, dataset, args.split, args.batch_size, image_scores
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
        "tile": tile_settings,
        **results.scores(matrix, dataset.class_names),
    }
    if args.crf:
        scores["crf"] = {
            "settings": crf_settings,
            **results.scores(matrices["crf", None], dataset.class_names),
        }
        print(
            f"mean IoU {scores['mean_iou']:.1%} without CRF, "
            f"{scores['crf']['mean_iou']:.1%} with CRF (global accuracy "
            f"{scores['pixel_accuracy']:.1%}, "
            f"{scores['crf']['pixel_accuracy']:.1%}; class-average accuracy "
            f"{scores['class_average_accuracy']:.1%}, "
            f"{scores['crf']['class_average_accuracy']:.1%})"
        )
    if trimap_widths:
        scores["trimap"] = {}
        for width in trimap_widths:
            band = {"mean_iou": float(mean_iou(matrices["network", width]))}
            if args.crf:
                band["mean_iou_crf"] = float(mean_iou(matrices["crf", width]))
            scores["trimap"][str(width)] = band
        print(trimap_table(matrices, trimap_widths, args.crf))
    scores["worst_images"] = [
        {"image": row["image"], "mean_iou": row["mean_iou"]}
        for row in image_scores.worst_rows()
    ]
    if args.worst:
        print(image_scores.worst_table())

    output_dir = args.output_dir or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval.json"), "w") as f:
        json.dump(scores, f, indent=2)
    image_scores.write_csv(os.path.join(output_dir, "per_image.csv"))
    written = ["eval.json", "per_image.csv", "confusion_matrix.png"]
    plots.plot_confusion_matrix(
        matrix,
        dataset.class_names,
        os.path.join(output_dir, "confusion_matrix.png"),
        title=f"{model.name} on {args.dataset} {args.split}",
    )
    if image_scores.kept:
        image_scores.plot_worst(
            os.path.join(output_dir, "worst_images.png"),
            title=f"{model.name} on {args.dataset} {args.split}: the "
            f"{len(image_scores.kept)} lowest mean IoUs of "
            f"{len(image_scores.rows)} images",
        )
        written.append("worst_images.png")
    print(f"Wrote {', '.join(written[:-1])} and {written[-1]} to {output_dir}")
    return scores


if __name__ == "__main__":
    cli.run_cli(main)
