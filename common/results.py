"""A run's outputs: `results.json` (one writer, one reader), its plots, resuming.

Training writes everything into `--output-dir`: `results.json` (scores of the
best checkpoint, the dataset it read, the settings it used), `curves.png`,
`predictions.png`, beside `best.keras`, `history.csv` and `tensorboard/` from
Keras' callbacks. `evaluate.py`, `predict.py` and `export.py` read the
`results.json` beside a model with `read_run`, so they need no data flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np

from common import layers, plots, voc
from common.backend import tf
from common.errors import InputError
from common.metrics import (
    class_average_accuracy,
    confusion_counts,
    mean_iou,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
)

RESULTS_FILE = "results.json"


# --------------------------------------------------------------------------
# Scores and results.json
# --------------------------------------------------------------------------


def scores(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """Mean IoU, the accuracies, per-class IoU and accuracy, and the matrix.

    `pixel_accuracy` is SegNet's global accuracy, `class_average_accuracy` its
    class-average accuracy (the mean of `per_class_accuracy`, each class's
    recall). A per-class value is None where the class has no pixels to score:
    in no label and no prediction for IoU, in no label for accuracy.
    """

    def by_class(values: np.ndarray) -> dict:
        return {
            name: None if np.isnan(value) else float(value)
            for name, value in zip(class_names, values)
        }

    return {
        "mean_iou": float(mean_iou(matrix)),
        "pixel_accuracy": float(pixel_accuracy(matrix)),
        "class_average_accuracy": float(class_average_accuracy(matrix)),
        "per_class_iou": by_class(per_class_iou(matrix)),
        "per_class_accuracy": by_class(per_class_accuracy(matrix)),
        "confusion_matrix": np.asarray(matrix).tolist(),
    }


def run_results(
    model: keras.Model,
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    matrix: np.ndarray,
    val_loss: float,
    history: keras.callbacks.History,
) -> dict:
    """What results.json holds: scores, the dataset, argv and what the run used.

    `settings` are the flags' values after defaults and scaling (the learning
    rate times the replicas, the global batch, DeepLab's output stride and
    --freeze-bn, the class weights); `training` names the model, its loss and
    optimizer configs and how its batch norm trained. A baseline can then be
    trusted without re-deriving it from `argv`.
    """
    train_losses = history.history.get("loss", [])
    return {
        **scores(matrix, dataset.class_names),
        "val_loss": float(val_loss),
        "epochs": args.epochs,
        "epochs_this_run": len(train_losses),
        "final_train_loss": float(train_losses[-1]) if train_losses else None,
        "optimizer_steps": history.optimizer_steps,
        "train_ms_per_step": history.train_ms_per_step,
        "class_weights": args.class_weights,
        # What evaluate.py and predict.py need to read this run's data again.
        "dataset": {
            "name": args.dataset,
            "data_dir": dataset.data_dir,
            "layout": dataset.layout,
            "class_names": list(dataset.class_names),
            "ignore_index": dataset.ignore_index,
            "mask_values": dataset.mask_values,
            "train_split": args.train_split,
            "val_split": args.val_split,
            **image_format_entry(dataset.image_format),
        },
        "argv": args.argv,
        "settings": _json_values(
            {key: value for key, value in vars(args).items() if key != "argv"}
        ),
        "training": {
            "model": model.name,
            "backend": keras.backend.backend(),
            "parameters": model.count_params(),
            "loss": _described(model.loss),
            "optimizer": _described(model.optimizer),
            "batch_norm": batch_norm_summary(model),
        },
    }


def image_format_entry(image_format: voc.ImageFormat) -> dict:
    """How the images are stored, and the band statistics the model standardises
    with (None for RGB): what `run_image_format` reads back."""
    return {
        "bands": image_format.bands,
        "dtype": image_format.dtype,
        "tiff": image_format.tiff,
        "band_mean": _listed(image_format.band_mean),
        "band_std": _listed(image_format.band_std),
    }


def _listed(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else list(values)


def run_image_format(run: dict | None) -> voc.ImageFormat:
    """The `ImageFormat` a run (its results.json, from `read_run`) trained on.

    Runs saved before results.json held it, and models from elsewhere (no
    run), trained on RGB. Tools that only predict pad with its `pad_value`
    and read images with it; the model itself standardises the bands.
    """
    entry = (run or {}).get("dataset") or {}
    if "bands" not in entry:
        return voc.RGB
    return voc.ImageFormat(
        bands=entry["bands"],
        dtype=entry["dtype"],
        tiff=entry.get("tiff", False),
        band_mean=None if entry["band_mean"] is None else tuple(entry["band_mean"]),
        band_std=None if entry["band_std"] is None else tuple(entry["band_std"]),
    )


def batch_norm_summary(model: keras.Model) -> dict:
    """How the model's BN layers trained: counts, momenta, synchronized or not."""
    norms = layers.batch_norm_layers(model)
    return {
        "layers": len(norms),
        "trained": sum(layer.trainable for layer in norms),
        "momentum": sorted({float(layer.momentum) for layer in norms}),
        "synchronized": any(layer.synchronized for layer in norms),
    }


def _described(obj) -> dict:
    """A Keras loss or optimizer as `{"class": ..., **its JSON-able config}`."""
    return {"class": type(obj).__name__, **_json_values(obj.get_config())}


def _json_values(values: dict) -> dict:
    """The entries of `values` that JSON can hold as they are (argparse, configs)."""
    kept = {}
    for key, value in values.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[key] = value
    return kept


def write_results(output_dir: str, results: dict) -> str:
    """Write `results.json` into `output_dir`; returns its path."""
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def read_run(model_path: str) -> tuple[dict | None, str]:
    """The training run's results.json beside `model_path`, and that file's path.

    Returns `(None, path)` when there is none (a model from elsewhere); a file
    that is not JSON is an `InputError` naming it.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), RESULTS_FILE)
    if not os.path.isfile(path):
        return None, path
    try:
        with open(path) as f:
            return json.load(f), path
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read it as JSON ({error}).") from None


def run_class_names(
    model_path: str, num_classes: int, *candidates: Sequence[str] | None
) -> list[str]:
    """Class names for a model's outputs: the run's, else a candidate's, else VOC's.

    The first list with `num_classes` names among: the run's dataset entry, its
    per-class IoU keys (runs saved before that entry existed), `candidates`,
    and VOC's 21 classes; failing all, `class_0`, `class_1`, ...
    """
    run, _ = read_run(model_path)
    run = run or {}
    options = [
        (run.get("dataset") or {}).get("class_names"),
        list(run.get("per_class_iou") or {}),
        *candidates,
        voc.VOC_CLASSES,
    ]
    for names in options:
        if names and len(names) == num_classes:
            return list(names)
    return [f"class_{index}" for index in range(num_classes)]


# --------------------------------------------------------------------------
# Plots of a run
# --------------------------------------------------------------------------

# Validation images scored when choosing which to picture: a bounded cost (one
# prediction pass over 200 images) even on VOC's 1,449 or a much larger split.
MAX_CANDIDATES = 200


def image_mean_iou(mask: np.ndarray, logits: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image: mask `(h, w)` labels, logits `(h, w, C)`; NaN if all void.

    Only the classes in this image's truth or prediction count (the others are
    NaN in `per_class_iou` and left out), so an image is scored on what it shows.
    """
    matrix = np.asarray(confusion_counts(mask[None], logits[None], num_classes))
    return float(mean_iou(matrix))


def predict_examples(
    model: keras.Model,
    dataset: Iterable,
    sizes: list[tuple[int, int]],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Predict the first `len(sizes)` examples of an evaluation dataset, one by one.

    `dataset` yields padded batches `(images, masks)` or `(images, masks,
    weights)` as `voc.make_dataset(..., training=False)` makes them; `sizes`
    are the images' own sizes (`voc.image_sizes`). Yields, cropped back to
    those sizes, each image (uint8 `(h, w, 3)`, as `voc.display_rgb` shows
    images that are not RGB), its mask (`(h, w)`, void 255) and its logits
    (float32 `(h, w, C)`). Only one batch's logits are held at a time: on VOC
    they are 21 floats a pixel.
    """
    done = 0
    for batch in dataset:
        # Checked here, not after the last yield, so that a progress bar
        # wrapped around `dataset` sees it end.
        if done == len(sizes):
            return
        batch_images, batch_masks = np.asarray(batch[0]), np.asarray(batch[1])
        logits = np.asarray(model.predict_on_batch(batch_images))
        batch_sizes = sizes[done:][: len(batch_images)]
        margin = (batch_images.shape[1] - batch_masks.shape[1]) // 2  # Valid U-Net.
        images = voc.remove_padding(batch_images, batch_sizes, margin)
        yield from zip(
            [voc.display_rgb(image) for image in images],
            voc.remove_padding(batch_masks, batch_sizes),
            voc.remove_padding(logits, batch_sizes),
        )
        done += len(batch_sizes)


def scored_examples(
    model: keras.Model,
    dataset: tf.data.Dataset,
    sizes: list[tuple[int, int]],
    num_classes: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[float]]:
    """Predict the first `len(sizes)` examples of an evaluation dataset and score each.

    Returns, as `predict_examples` yields them, the images (uint8 `(h, w, 3)`),
    masks and predicted labels (uint8 `(h, w)`, void 255) and each image's
    `image_mean_iou`; padding is void in the masks, so it is never scored.
    """
    images, masks, predictions, ious = [], [], [], []
    for image, mask, logits in predict_examples(model, dataset, sizes):
        ious.append(image_mean_iou(mask, logits, num_classes))
        images.append(image)
        masks.append(mask.astype(np.uint8))
        predictions.append(np.argmax(logits, axis=-1).astype(np.uint8))
    return images, masks, predictions, ious


def validation_images(
    args: argparse.Namespace, dataset: voc.DatasetSpec, val_ds
) -> tuple[list[str], list[tuple[int, int]]]:
    """The first `MAX_CANDIDATES` validation images' names and sizes as trained."""
    if dataset.layout == "cache":  # `cache.EvaluationBatches` knows its own.
        return val_ds.names[:MAX_CANDIDATES], val_ds.sizes[:MAX_CANDIDATES]
    pairs = voc.list_pairs(dataset.data_dir, args.val_split, dataset.layout)
    pairs = pairs[:MAX_CANDIDATES]
    sizes = [voc.scaled_size(size, args.image_scale) for size in voc.image_sizes(pairs)]
    stems = [os.path.splitext(os.path.basename(image))[0] for image, _ in pairs]
    return stems, sizes


def plot_run(
    model: keras.Model,
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    val_ds: tf.data.Dataset,
) -> None:
    """`curves.png` from history.csv and `predictions.png` of hits and misses.

    predictions.png shows `args.num_predictions` validation images (none for
    0) picked among the first `MAX_CANDIDATES` (200, to bound the cost):
    every class they contain at least once, then the lowest per-image mean
    IoU (`plots.choose_examples`). Each row names its image and that IoU.
    """
    plots.plot_history(
        os.path.join(args.output_dir, "history.csv"),
        os.path.join(args.output_dir, "curves.png"),
    )
    count = args.num_predictions
    if count <= 0:
        return
    stems, sizes = validation_images(args, dataset, val_ds)
    images, masks, predictions, ious = scored_examples(
        model, val_ds, sizes, dataset.num_classes
    )
    chosen = plots.choose_examples(masks, ious, count)
    stems = [stems[i] for i in chosen]
    plots.plot_predictions(
        [images[i] for i in chosen],
        [masks[i] for i in chosen],
        [predictions[i] for i in chosen],
        dataset.class_names,
        os.path.join(args.output_dir, "predictions.png"),
        title=f"{model.name} on {args.dataset} {args.val_split}: every class, "
        f"then the lowest IoU of the first {len(ious)} images",
        row_titles=[f"{stem}\nIoU {ious[i]:.2f}" for stem, i in zip(stems, chosen)],
    )


# --------------------------------------------------------------------------
# The run folder: starting, resuming, interrupting
# --------------------------------------------------------------------------


def open_run_folder(output_dir: str) -> None:
    """Create the run folder and say whether this run starts or resumes."""
    resuming = os.path.isdir(os.path.join(output_dir, "backup"))
    os.makedirs(output_dir, exist_ok=True)
    if resuming:
        print(f"Resuming the run in {output_dir}")
    else:
        print(
            f"Writing to {output_dir} (if interrupted, rerun with "
            f"--output-dir {output_dir} to resume)"
        )


def history_rows(output_dir: str) -> list[dict]:
    """The rows of the run's history.csv (one per finished epoch), if any."""
    path = os.path.join(output_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def best_val_mean_iou(output_dir: str) -> float | None:
    """Best validation mean IoU in a resumed run's history, for its checkpoint."""
    values = [float(row["val_mean_iou"]) for row in history_rows(output_dir)]
    return max(values) if values else None


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run where it stopped."""
    argv = list(args.argv)
    if "--output-dir" not in argv and not any(
        arg.startswith("--output-dir=") for arg in argv
    ):
        argv += ["--output-dir", args.output_dir]
    return shlex.join(["python", os.path.basename(sys.argv[0]), *argv])


def interruption_message(args: argparse.Namespace, cause: str = "Ctrl-C") -> str:
    """What an interruption left behind, and the command that resumes, if any.

    A worker of a multi-worker run other than the chief writes nothing: the
    chief's folder holds the run. Once the last epoch is done, `fit` has
    deleted `backup/`: nothing is left to resume, only the final scoring.
    """
    if not args.chief:
        return (
            f"Stopped by {cause}: this worker writes nothing; the chief's "
            "--output-dir keeps the finished epochs. To resume, rerun the same "
            f"command on every worker: {resume_command(args)}"
        )
    finished = len(history_rows(args.output_dir))
    if not finished:
        return (
            f"Stopped by {cause} before the first epoch finished: nothing is "
            "saved, so there is nothing to resume."
        )
    if finished >= args.epochs and not os.path.isdir(
        os.path.join(args.output_dir, "backup")
    ):
        return finished_run_message(args, cause)
    return (
        f"Stopped by {cause}: {finished} of {args.epochs} epochs are finished and "
        f"saved. To resume: {resume_command(args)}"
    )


def finished_run_message(args: argparse.Namespace, cause: str) -> str:
    """A stop after the last epoch: what the final scoring had written, if anything."""
    if os.path.isfile(os.path.join(args.output_dir, RESULTS_FILE)):
        return f"Stopped by {cause} at the end: the run is saved in {args.output_dir}."
    best = os.path.join(args.output_dir, "best.keras")
    command = ["python", "evaluate.py", "--model", best, "--dataset", args.dataset]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return (
        f"Stopped by {cause} in the final evaluation: all {args.epochs} epochs are "
        f"finished, and best.keras and history.csv are saved in {args.output_dir}; "
        f"{RESULTS_FILE} is not written. To score best.keras: {shlex.join(command)}"
    )
