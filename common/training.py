"""The training tail every script shares: flags, data, compile, fit, results.

A script defines its model and calls, in order:

    args = parse_args(argv)              # with training.add_common_args(parser)
    strategy = training.set_up(args, "myscript")   # seed, precision, devices
    dataset = training.resolve_dataset(args)
    train_ds, val_ds, steps = training.make_datasets(args, dataset)
    with strategy.scope():
        model = build_my_model(dataset.num_classes, ...)
    results = training.fit_and_evaluate(model, args, dataset, train_ds, val_ds, steps)

Outputs, all in `--output-dir`: `best.keras` (best validation mean IoU),
`history.csv`, `results.json`, `curves.png`, `predictions.png`, TensorBoard logs
in `tensorboard/`, and `backup/` while a run is unfinished: rerunning the same
command with the same `--output-dir` resumes it from its last finished epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import keras
import numpy as np
import tensorflow as tf

from common import console, distribute, layers, plots, shapes, voc
from common.losses import median_frequency_weights, segmentation_loss
from common.metrics import (
    ConfusionMatrix,
    iou_table,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
)

VOC_DIR = os.path.join("data", "VOCdevkit", "VOC2012")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits with status 2.

    The scripts' usage text runs to twenty lines; someone who typed
    `--epochs 0` needs the one line that says what is wrong with it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str, kind: type, is_allowed: Callable, allowed: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not is_allowed(value):
        raise argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda value: value >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda value: value >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, float, lambda value: value > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, float, lambda value: value >= 0, "a number >= 0")


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1), e.g. a momentum."""
    return _number(text, float, lambda value: 0 <= value < 1, "a number in [0, 1)")


def mask_value(text: str) -> int:
    """argparse type: a value a uint8 mask pixel can hold, 0-255."""
    return _number(text, int, lambda value: 0 <= value <= 255, "an integer 0-255")


def describe_default(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Say in `--help` what a computed default is, where argparse would say None."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = f"{action.help.split(' (default')[0]} (default: {text})"
            return
    raise ValueError(f"no flag stores into {dest!r}")


def check_crop_size(
    parser: argparse.ArgumentParser, crop_size: int, valid_input_size: Callable
) -> None:
    """Refuse a crop the network cannot take, before any data or model is built."""
    if valid_input_size(crop_size) != crop_size:
        parser.error(
            f"argument --crop-size: this network cannot take {crop_size} pixels; "
            f"the nearest size it takes is {valid_input_size(crop_size)}"
        )


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Flags that say which dataset to read (shared by training and evaluate.py)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=["voc", "shapes", "folder", "camvid"],
        default="voc",
        help="voc: PASCAL VOC 2012 (bash data/voc_download.sh); shapes: the "
        "built-in synthetic set, generated on first use (seconds); folder: your "
        "own data, either SPLIT/images + SPLIT/masks or CamVid's SPLIT + "
        "SPLITannot; camvid: folder with CamVid's 11 class names and void 11 "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--data-dir",
        help=f"dataset folder (default: {VOC_DIR} for voc, data/shapes for shapes, "
        f"{voc.CAMVID_DIR} for camvid)",
    )
    data.add_argument(
        "--num-classes",
        type=positive_int,
        help="classes in your masks, void excluded (required with --dataset folder; "
        "default: 21 for voc, 6 for shapes, 11 for camvid)",
    )
    data.add_argument(
        "--ignore-index",
        type=mask_value,
        default=voc.IGNORE_LABEL,
        help="mask value that means 'void, do not score' in your data; remapped to "
        "255 (CamVid: 11; default: %(default)s)",
    )
    data.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="names for --dataset folder, in class-index order (default: class_0 ...)",
    )
    data.add_argument(
        "--mask-values",
        choices=voc.MASK_VALUES,
        help="--dataset folder: binary = black-and-white masks, 0 -> class 0, 255 "
        "-> class 1 (needs --num-classes 2); index = grey value is the class "
        "(default: index, but masks of only 0 and 255 stop with an error)",
    )
    return data


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the data, optimisation and output flags that every script shares.

    A script sets its own defaults afterwards with `parser.set_defaults(...)`.
    """
    data = add_dataset_args(parser)
    data.add_argument("--train-split", default="train", help="default: %(default)s")
    data.add_argument("--val-split", default="val", help="default: %(default)s")
    data.add_argument(
        "--crop-size",
        type=positive_int,
        help="square training crop in pixels (default: %(default)s)",
    )
    data.add_argument(
        "--scale-range",
        type=positive_float,
        nargs=2,
        default=[0.5, 2.0],
        metavar=("MIN", "MAX"),
        help="random rescaling of training images before the crop, as DeepLab "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="images per replica (device); the global batch is this times the "
        "number of replicas (default: %(default)s)",
    )
    data.add_argument(
        "--cache",
        action="store_true",
        help="keep decoded images in memory after the first epoch (VOC train: ~1 GB)",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=positive_int, default=50, help="default: %(default)s"
    )
    train.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        help="training batches per epoch (default: one pass over the training split)",
    )
    train.add_argument(
        "--val-steps",
        type=positive_int,
        help="validation batches per epoch (default: the whole validation split)",
    )
    train.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default="adam",
        help="sgd uses --momentum (default: %(default)s)",
    )
    train.add_argument(
        "--learning-rate",
        type=positive_float,
        default=1e-3,
        help="initial learning rate for one replica's batch; multiplied by the "
        "number of replicas (linear scaling rule) (default: %(default)s)",
    )
    train.add_argument(
        "--momentum",
        type=unit_interval,
        default=0.9,
        help="SGD momentum (default: %(default)s)",
    )
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=0.0,
        help="decoupled weight decay of the optimizer (default: %(default)s)",
    )
    train.add_argument(
        "--lr-schedule",
        choices=["poly", "constant"],
        default="poly",
        help="poly: lr * (1 - step/total)^0.9, as DeepLab (default: %(default)s)",
    )
    train.add_argument(
        "--class-weighting",
        choices=["none", "median"],
        default="none",
        help="median: weight each training pixel by median(freq)/freq of its class "
        "(median-frequency balancing, SegNet Sec. 3.2), counted once on the "
        "training masks, so thin and rare classes are not ignored "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds data order, augmentation and weights (default: %(default)s)",
    )

    scale = parser.add_argument_group("speed and scale")
    scale.add_argument(
        "--strategy",
        choices=distribute.STRATEGIES,
        default="auto",
        help="tf.distribute strategy; auto = mirrored when several GPUs are visible, "
        "else default (one device); multiworker = several machines, configured by "
        "TF_CONFIG, trained by a custom loop with --sync-bn forced on (README: "
        "Several machines) (default: %(default)s)",
    )
    scale.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with several replicas, batch norm uses the statistics of the whole "
        "global batch instead of each replica's slice (an all-reduce per BN layer "
        "per step); no effect on one device (default: %(default)s)",
    )
    scale.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 compute on GPU (bfloat16 elsewhere), float32 logits and loss",
    )
    scale.add_argument(
        "--jit-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="XLA for fit; auto = Keras' choice: on for one GPU, off on CPU and "
        "under tf.distribute (default: %(default)s)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        help="where checkpoints, logs and results go (default: "
        "runs/SCRIPT-DATASET-TIME). "
        "Rerun with the same --output-dir to resume an interrupted run.",
    )
    output.add_argument(
        "--num-predictions",
        type=non_negative_int,
        default=6,
        help="validation images in predictions.png (default: %(default)s)",
    )


def parse_known(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv` (default: the command line); keep it in `args.argv` for results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def default_output_dir(script: str, dataset: str) -> str:
    return os.path.join("runs", f"{script}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def resolve_dataset(args: argparse.Namespace) -> voc.DatasetSpec:
    """Turn the data flags into a `DatasetSpec`, generating `shapes` if needed."""
    if args.dataset == "shapes":
        data_dir = args.data_dir or shapes.DEFAULT_DIR
        if not shapes.is_shapes_dir(data_dir) or data_dir == shapes.DEFAULT_DIR:
            shapes.generate_shapes(data_dir)  # Rebuilds an outdated default folder.
        return voc.DatasetSpec(data_dir, "voc", shapes.SHAPES_CLASSES)
    if args.dataset == "voc":
        return voc.DatasetSpec(args.data_dir or VOC_DIR, "voc", voc.VOC_CLASSES)
    if args.dataset == "camvid":
        return voc.DatasetSpec(
            args.data_dir or voc.CAMVID_DIR,
            "camvid",
            voc.CAMVID_CLASSES,
            voc.CAMVID_VOID,
        )
    if args.data_dir is None or args.num_classes is None:
        raise voc.DatasetError("--dataset folder needs --data-dir and --num-classes.")
    names = tuple(args.class_names or (f"class_{i}" for i in range(args.num_classes)))
    if len(names) != args.num_classes:
        raise voc.DatasetError(
            f"--class-names lists {len(names)} names but --num-classes is "
            f"{args.num_classes}."
        )
    return voc.DatasetSpec(
        args.data_dir, "auto", names, args.ignore_index, args.mask_values
    )


def make_datasets(
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    valid_input_size: Callable[[int], int] = voc.round_up,
    label_margin: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Training and validation pipelines plus the number of training steps per epoch.

    With `--class-weighting median`, each training pixel also carries its
    class's weight (the dataset's third element, Keras' `sample_weight`).
    """
    common = dict(
        layout=dataset.layout,
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        mask_values=dataset.mask_values,
        valid_input_size=valid_input_size,
        label_margin=label_margin,
        cache=args.cache,
        seed=args.seed,
    )
    train_pairs = voc.list_pairs(dataset.data_dir, args.train_split, dataset.layout)
    batch_size = args.global_batch_size  # Set by set_up().
    if len(train_pairs) < batch_size:
        raise voc.DatasetError(
            f"Split {args.train_split!r} has {len(train_pairs)} images, fewer than "
            f"the global batch of {batch_size}."
        )
    args.class_weights = None
    if args.class_weighting == "median":
        args.class_weights = median_frequency_class_weights(train_pairs, dataset)
    train_ds = voc.make_dataset(
        dataset.data_dir,
        args.train_split,
        batch_size,
        args.crop_size,
        True,
        scale_range=tuple(args.scale_range),
        class_weights=args.class_weights,
        **common,
    )
    val_ds = voc.make_dataset(
        dataset.data_dir,
        args.val_split,
        batch_size,
        args.crop_size,
        False,
        **common,
    )
    steps = args.steps_per_epoch or len(train_pairs) // batch_size
    return train_ds, val_ds, steps


def median_frequency_class_weights(
    train_pairs: Sequence[tuple[str, str]], dataset: voc.DatasetSpec
) -> list[float]:
    """Median-frequency weights from every training mask, printed as a table.

    Thin and rare classes (VOC's bicycle and chair, CamVid's pole and sign)
    cover few pixels, so unweighted cross-entropy can ignore them and still
    fall; weighting each pixel by median(freq) / freq of its class (Eigen &
    Fergus 2015; SegNet, Sec. 3.2) makes every class count about equally.
    Void pixels are not counted. Reading every mask takes seconds for a few
    hundred images, about a minute for VOC train.
    """
    class_pixels, present_pixels = voc.class_pixel_counts(
        train_pairs, dataset.num_classes, dataset.ignore_index, dataset.mask_values
    )
    weights = median_frequency_weights(class_pixels, present_pixels)
    total = max(int(class_pixels.sum()), 1)
    print(f"Median-frequency class weights from {len(train_pairs)} training masks:")
    print(f"  {'class':<16}{'pixels':>8}{'weight':>9}")
    for name, pixels, weight in zip(dataset.class_names, class_pixels, weights):
        print(f"  {name:<16}{pixels / total:8.2%}{weight:9.3f}")
    return [float(weight) for weight in weights]


# --------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------


def make_optimizer(
    args: argparse.Namespace, total_steps: int
) -> keras.optimizers.Optimizer:
    """SGD with momentum or Adam, with the poly schedule of DeepLab (power 0.9)."""
    learning_rate = args.learning_rate
    if args.lr_schedule == "poly":
        learning_rate = keras.optimizers.schedules.PolynomialDecay(
            args.learning_rate,
            decay_steps=total_steps,
            end_learning_rate=0.0,
            power=0.9,
        )
    weight_decay = args.weight_decay or None
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=args.momentum, weight_decay=weight_decay
        )
    return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)


class IoUReport(keras.callbacks.Callback):
    """After each validation, print per-class IoU and log pixel accuracy.

    A high pixel accuracy with every object class at 0% IoU means the model
    predicts background everywhere; the table makes that impossible to miss.
    """

    def __init__(self, metric: ConfusionMatrix, class_names: Sequence[str]):
        super().__init__()
        self.metric = metric
        self.class_names = class_names

    def on_epoch_end(self, epoch, logs=None):
        matrix = self.metric.matrix.numpy()  # Holds the validation counts now.
        print(
            f"\nValidation after epoch {epoch + 1}:\n"
            f"{iou_table(matrix, self.class_names)}"
        )
        if logs is not None:
            logs["val_pixel_accuracy"] = float(pixel_accuracy(matrix))


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step after the first `warmup` ones.

    The first step traces and compiles the training function, so it is left
    out. `median_ms()` goes into results.json as `train_ms_per_step`: the
    speed of this model on this machine, input pipeline included.
    """

    def __init__(self, warmup: int = 1):
        super().__init__()
        self.warmup = warmup
        self.steps = 0
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps > self.warmup:
            self.times.append(time.perf_counter() - self.start)

    def median_ms(self) -> float | None:
        return 1000 * float(np.median(self.times)) if self.times else None


def _best_so_far(history_path: str) -> float | None:
    """Best validation mean IoU already in a resumed run's history, if any."""
    if not os.path.isfile(history_path):
        return None
    with open(history_path) as f:
        values = [float(row["val_mean_iou"]) for row in csv.DictReader(f)]
    return max(values) if values else None


def make_callbacks(
    args: argparse.Namespace, metric: ConfusionMatrix, class_names: Sequence[str]
) -> list[keras.callbacks.Callback]:
    output_dir = args.output_dir
    history_path = os.path.join(output_dir, "history.csv")
    return [
        IoUReport(metric, class_names),  # First: adds val_pixel_accuracy to the logs.
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output_dir, "best.keras"),
            monitor="val_mean_iou",
            mode="max",
            save_best_only=True,
            initial_value_threshold=_best_so_far(history_path),
        ),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard")),
        keras.callbacks.TerminateOnNaN(),
    ]


# --------------------------------------------------------------------------
# Fit, evaluate, report
# --------------------------------------------------------------------------


def set_up(args: argparse.Namespace, script: str) -> tf.distribute.Strategy:
    """Seed, precision and distribution strategy, printed in one line.

    Returns the strategy; build the model inside `strategy.scope()`. Sets
    `args.global_batch_size` (per-replica batch x replicas), scales
    `args.learning_rate` with the number of replicas, and chooses
    `args.output_dir`, which `fit_and_evaluate` creates once the data and the
    model are built (so a run that fails its checks leaves no folder behind).
    """
    strategy = distribute.make_strategy(args.strategy)
    if distribute.is_multi_worker(strategy):
        args.sync_bn = True  # Else BN's moving statistics drift apart per worker.
    keras.utils.set_random_seed(args.seed)
    policy = distribute.set_precision(args.mixed_precision)
    replicas = strategy.num_replicas_in_sync
    args.global_batch_size = args.batch_size * replicas
    args.learning_rate *= replicas
    args.output_dir = args.output_dir or default_output_dir(script, args.dataset)
    print(
        f"{describe_devices(strategy)} · global batch {args.global_batch_size} · "
        f"learning rate {args.learning_rate:g} · {policy}"
    )
    return strategy


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    """E.g. "1 device (CPU)" or "4 devices (GPU, MirroredStrategy)"."""
    replicas = strategy.num_replicas_in_sync
    kind = next(
        (kind for kind in ("TPU", "GPU") if tf.config.list_logical_devices(kind)),
        "CPU",
    )
    text = f"{replicas} device{'s' if replicas > 1 else ''} ({kind}"
    if replicas > 1:
        text += f", {strategy.__class__.__name__}"
    return text + ")"


def _open_output_dir(args: argparse.Namespace) -> None:
    """Create the run folder and say whether this run starts or resumes."""
    resuming = os.path.isdir(os.path.join(args.output_dir, "backup"))
    os.makedirs(args.output_dir, exist_ok=True)
    if resuming:
        print(f"Resuming the run in {args.output_dir}")
    else:
        print(
            f"Writing to {args.output_dir} (if interrupted, rerun with "
            f"--output-dir {args.output_dir} to resume)"
        )


class TrainingInterrupted(Exception):
    """Ctrl-C during `fit`; the message says what is saved and how to resume."""


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run where it stopped."""
    argv = list(args.argv)
    if "--output-dir" not in argv and not any(
        arg.startswith("--output-dir=") for arg in argv
    ):
        argv += ["--output-dir", args.output_dir]
    return shlex.join(["python", os.path.basename(sys.argv[0]), *argv])


def _epochs_finished(args: argparse.Namespace) -> int:
    """Epochs in history.csv: the ones a resumed run will not repeat."""
    history_path = os.path.join(args.output_dir, "history.csv")
    if not os.path.isfile(history_path):
        return 0
    with open(history_path) as f:
        return sum(1 for _ in csv.DictReader(f))


def _raise_data_error(error: tf.errors.OpError, args: argparse.Namespace):
    """Re-raise a TensorFlow error from the input pipeline as a `DatasetError`."""
    raise voc.DatasetError(
        f"While reading the data: {voc.tf_error_message(error)}\n"
        "To check every file, run: "
        f"python -m common.voc verify {args.data_dir or '<data-dir>'} --split "
        f"{args.train_split}"
    ) from None


def _prepare_batch_norm(model: keras.Model, args: argparse.Namespace) -> None:
    """Synchronise BN across replicas (--sync-bn) and let its statistics keep up."""
    if args.sync_bn and model.distribute_strategy.num_replicas_in_sync > 1:
        synced = layers.synchronize_batch_norm(model)
        print(f"Synchronized {synced} batch norm layers across replicas (--sync-bn).")
    replaced = layers.speed_up_batch_norm_statistics(model)
    if replaced:
        print(
            f"Batch norm: moving-average momentum {max(replaced):g} -> "
            f"{layers.BN_MOMENTUM:g} in {len(replaced)} trained layers, so that "
            "validation normalises with statistics of the current weights."
        )


def _interruption_message(args: argparse.Namespace) -> str:
    finished = _epochs_finished(args)
    saved = (
        f"{finished} of {args.epochs} epochs are finished and saved"
        if finished
        else "no epoch had finished, so nothing is saved yet"
    )
    return f"Stopped by Ctrl-C: {saved}. To resume: {resume_command(args)}"


def fit_and_evaluate(
    model: keras.Model,
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    steps_per_epoch: int,
) -> dict:
    """Compile, train with the shared callbacks, score the best model, write outputs."""
    _prepare_batch_norm(model, args)
    with model.distribute_strategy.scope():  # The strategy the model was built in.
        metric = ConfusionMatrix(dataset.num_classes)
        model.compile(
            optimizer=make_optimizer(args, args.epochs * steps_per_epoch),
            loss=segmentation_loss(),
            metrics=[metric],
            jit_compile={"auto": "auto", "on": True, "off": False}[args.jit_compile],
        )
        # The optimizer's slots, made now: created inside the first traced train
        # step they make TensorFlow trace that step twice (seconds to minutes),
        # and the multi-worker loop needs them before it restores a checkpoint.
        model.optimizer.build(model.trainable_variables)
    print(
        f"{model.name}: {model.count_params():,} parameters; {steps_per_epoch} steps "
        f"of {args.global_batch_size} images per epoch"
    )
    if distribute.is_multi_worker(model.distribute_strategy):
        from common import multiworker  # Here: multiworker imports this module.

        return multiworker.fit_and_evaluate(
            model, args, dataset, train_ds, val_ds, steps_per_epoch
        )
    _open_output_dir(args)
    timer = StepTimer()
    verbose = console.progress_verbosity()
    try:
        try:
            history = model.fit(
                train_ds,
                shuffle=False,  # The pipeline shuffles; Keras cannot shuffle it.
                epochs=args.epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=val_ds,
                validation_steps=args.val_steps,
                callbacks=[*make_callbacks(args, metric, dataset.class_names), timer],
                verbose=verbose,
            )
        except KeyboardInterrupt:
            raise TrainingInterrupted(_interruption_message(args)) from None
        steps_done = int(model.optimizer.iterations.numpy())  # Before loading best.
        best_path = os.path.join(args.output_dir, "best.keras")
        if os.path.isfile(best_path):
            model.load_weights(best_path)
        evaluation = model.evaluate(
            val_ds, steps=args.val_steps, return_dict=True, verbose=verbose
        )
    except tf.errors.InvalidArgumentError as error:
        _raise_data_error(error, args)
    matrix = metric.matrix.numpy()
    print(
        f"\nBest model on {args.val_split}:\n{iou_table(matrix, dataset.class_names)}"
    )
    results = _results(matrix, dataset, args, evaluation, history)
    results["optimizer_steps"] = steps_done
    results["train_ms_per_step"] = timer.median_ms()
    _write_outputs(model, args, dataset, val_ds, results)
    return results


def _results(matrix, dataset, args, evaluation, history) -> dict:
    ious = per_class_iou(matrix).numpy()
    train_losses = history.history.get("loss", [])
    return {
        "mean_iou": float(mean_iou(matrix)),
        "pixel_accuracy": float(pixel_accuracy(matrix)),
        "per_class_iou": {
            name: None if np.isnan(iou) else float(iou)
            for name, iou in zip(dataset.class_names, ious)
        },
        "val_loss": float(evaluation["loss"]),
        "epochs": args.epochs,
        "epochs_this_run": len(train_losses),
        "final_train_loss": float(train_losses[-1]) if train_losses else None,
        "confusion_matrix": matrix.tolist(),
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
        },
        "argv": args.argv,
    }


def _write_outputs(model, args, dataset, val_ds, results) -> None:
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plots.plot_history(
        os.path.join(args.output_dir, "history.csv"),
        os.path.join(args.output_dir, "curves.png"),
    )
    _plot_validation_predictions(model, args, dataset, val_ds)
    print(
        f"\nmean IoU {results['mean_iou']:.4f}, pixel accuracy "
        f"{results['pixel_accuracy']:.4f}; outputs in {args.output_dir}"
    )


def _plot_validation_predictions(model, args, dataset, val_ds) -> None:
    """Predict the first validation images and crop the padding off again."""
    count = args.num_predictions
    if count <= 0:
        return
    pairs = voc.list_pairs(dataset.data_dir, args.val_split, dataset.layout)[:count]
    sizes = voc.image_sizes(pairs)
    batch_images, batch_masks = [], []
    for images, masks in val_ds.unbatch().take(len(sizes)).batch(len(sizes)):
        batch_images, batch_masks = images.numpy(), masks.numpy()
    predictions = np.argmax(model.predict(batch_images, verbose=0), axis=-1)
    margin = (batch_images.shape[1] - batch_masks.shape[1]) // 2
    crops = [(slice(0, h), slice(0, w)) for h, w in sizes]
    plots.plot_predictions(
        [
            image[margin : margin + h, margin : margin + w]
            for image, (h, w) in zip(batch_images, sizes)
        ],
        [mask[crop] for mask, crop in zip(batch_masks, crops)],
        [prediction[crop] for prediction, crop in zip(predictions, crops)],
        dataset.class_names,
        os.path.join(args.output_dir, "predictions.png"),
        title=f"{model.name} on {args.dataset} {args.val_split}",
    )


def run_cli(main: Callable[[], dict]) -> None:
    """Run a script's `main`: bad input and Ctrl-C print one line, no traceback.

    Exit status: 1 for bad input, 130 for Ctrl-C (the shell's 128 + SIGINT).
    """
    try:
        main()
    except voc.InputError as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingInterrupted as interruption:
        print(f"\n{interruption}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print(
            "\nInterrupted before training started; nothing to resume.", file=sys.stderr
        )
        raise SystemExit(130) from None
