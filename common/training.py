"""What every training script does around its model: set-up, data, fit, results.

A script reads, in order (see `unet_train.main`):

    args = parse_args(argv)                        # common.cli flags + the model's
    strategy = training.set_up(args, "unet")       # devices, precision, seed
    dataset = cli.resolve_dataset(args)
    train_ds, val_ds, steps = training.make_datasets(args, dataset, rule)
    with strategy.scope():
        model = build_unet(dataset.num_classes)
        training.init_from(model, args)            # --init-from: trained weights
        iou = ConfusionMatrix(dataset.num_classes)
        model.compile(optimizer=training.make_optimizer(args, total_steps),
                      loss=segmentation_loss(), metrics=[iou])
    callbacks = training.make_callbacks(args, iou, dataset.class_names)
    with training.resumable(args):
        history = training.fit(model, train_ds, epochs=..., callbacks=callbacks)
        return training.save_results(model, args, dataset, val_ds, history, iou)

Outputs, all in `--output-dir`: `best.keras` (best validation mean IoU),
`history.csv`, `results.json`, `curves.png`, `predictions.png`, TensorBoard logs
in `tensorboard/`, and `backup/` while a run is unfinished: rerunning the same
command with the same `--output-dir` resumes it from its last finished epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np

from common import (
    backend,
    cache,
    cli,
    console,
    distribute,
    layers,
    multiworker,
    results,
    stops,
    voc,
)
from common.backbones import copy_weights_by_name
from common.backend import tf
from common.errors import (
    DatasetError,
    InputError,
    TrainingDiverged,
    TrainingInterrupted,
    WorkerLost,
)
from common.inference import load_model
from common.losses import median_frequency_weights
from common.metrics import ConfusionMatrix, IoUReport, iou_table

# --------------------------------------------------------------------------
# Set-up: devices, precision, seed, the global batch
# --------------------------------------------------------------------------


def set_up(args: argparse.Namespace, script: str) -> tf.distribute.Strategy:
    """Seed, precision and distribution strategy, printed in one line.

    Returns the strategy; build and compile the model inside
    `strategy.scope()`. Sets `args.global_batch_size` (per-replica batch x
    replicas), scales `args.learning_rate` with the number of replicas (the
    linear scaling rule), and chooses `args.output_dir`, which `resumable`
    creates once the data and the model are built (so a run that fails its
    checks leaves no folder behind). `args.chief` is False on the workers of a
    multi-worker run that write no outputs. `--deterministic` turns on
    TensorFlow's op determinism for the rest of the process. A missing
    `--init-from` file stops the run here, before any work.
    """
    backend.load_tensorflow_off_the_gpus()
    strategy = distribute.make_strategy(args.strategy)
    if distribute.is_multi_worker(strategy):
        if args.jit_compile == "on":
            raise InputError(
                "--jit-compile on: the multi-worker loop does not use XLA; drop "
                "the flag."
            )
        args.sync_bn = True  # Else BN's moving statistics drift apart per worker.
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:  # Deterministic kernels: same seed, same numbers.
        enable_determinism()
    policy = distribute.set_precision(args.mixed_precision)
    replicas = strategy.num_replicas_in_sync
    args.global_batch_size = args.batch_size * replicas
    args.learning_rate *= replicas
    args.chief = distribute.is_chief(strategy)
    args.output_dir = args.output_dir or os.path.join(
        "runs", f"{script}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if os.path.isfile(args.output_dir):
        raise InputError(
            f"--output-dir {args.output_dir}: this is a file; give the folder of a "
            "run to resume, or a new folder."
        )
    if args.init_from and not resumes(args.output_dir):
        cli.check_path(
            args.init_from, "--init-from", "file", "a .keras model written by training"
        )
    print(
        f"{describe_devices(strategy)} · global batch {args.global_batch_size} · "
        f"learning rate {args.learning_rate:g} · {policy}"
        + (" · deterministic ops" if args.deterministic else "")
    )
    return strategy


def enable_determinism() -> None:
    """`--deterministic`: the same seed gives the same numbers, run after run.

    TensorFlow picks deterministic kernels (slower on GPUs). JAX is
    deterministic on CPU; on a GPU it needs XLA_FLAGS=
    --xla_gpu_deterministic_ops=true before it starts, which this cannot set.
    """
    if backend.name() == "tensorflow":
        tf.config.experimental.enable_op_determinism()
    elif backend.has_accelerator():
        print(
            "--deterministic: on a GPU, JAX needs "
            "XLA_FLAGS=--xla_gpu_deterministic_ops=true set before the run."
        )


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    """E.g. "1 device (CPU, JAX)" or "4 devices (GPU, MirroredStrategy)"."""
    replicas = strategy.num_replicas_in_sync
    text = f"{replicas} device{'s' if replicas > 1 else ''} ({device_kind()}"
    if backend.name() != "tensorflow":
        text += f", {backend.name().upper() if backend.name() == 'jax' else 'PyTorch'}"
    elif replicas > 1:
        text += f", {strategy.__class__.__name__}"
    return text + ")"


def device_kind() -> str:
    """ "GPU", "TPU" or "CPU": where this backend computes."""
    if backend.name() == "tensorflow":
        return next(
            (kind for kind in ("TPU", "GPU") if tf.config.list_logical_devices(kind)),
            "CPU",
        )
    platform = keras.distribution.list_devices()[0].split(":")[0].upper()
    return "GPU" if platform in ("CUDA", "ROCM") else platform


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def make_datasets(
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    input_size_rule: Callable[[int], int] = voc.round_up,
    label_margin: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Training and validation pipelines plus the number of training steps per epoch.

    `input_size_rule(size)` is the smallest size >= `size` the network takes
    (validation pads every image up to it). With `--class-weighting median`,
    each training pixel also carries its class's weight (the dataset's third
    element, Keras' `sample_weight`), and `args.class_weights` records them.
    """
    batch_size = args.global_batch_size  # Set by set_up().
    if dataset.layout == "cache":  # No tf.data: batches made on the device.
        images, masks, _ = cache.read_split(dataset.data_dir, args.train_split)
        examples = len(masks)
    else:
        train_pairs = voc.list_pairs(dataset.data_dir, args.train_split, dataset.layout)
        examples = len(train_pairs)
    if examples < batch_size:
        raise DatasetError(
            f"Split {args.train_split!r} has {examples} images, fewer than "
            f"the global batch of {batch_size}."
        )
    args.class_weights = None
    if args.class_weighting == "median":
        counts = (
            voc.count_class_pixels(masks, dataset.num_classes)
            if dataset.layout == "cache"
            else voc.class_pixel_counts(
                train_pairs,
                dataset.num_classes,
                dataset.ignore_index,
                dataset.mask_values,
                dataset.image_format,
            )
        )
        args.class_weights = median_frequency_class_weights(
            *counts, dataset.class_names, examples
        )
    steps = args.steps_per_epoch or examples // batch_size
    if dataset.layout == "cache":
        train, val = cache.make_datasets(
            images, masks, dataset.data_dir, args, steps, input_size_rule, label_margin
        )
        return train, val, steps
    common = dict(
        layout=dataset.layout,
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        mask_values=dataset.mask_values,
        image_format=dataset.image_format,  # Bands and band statistics (cli).
        input_size_rule=input_size_rule,
        label_margin=label_margin,
        cache=args.cache,
        seed=args.seed,
        image_scale=args.image_scale,
    )
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
    return train_ds, val_ds, steps


def median_frequency_class_weights(
    class_pixels: np.ndarray,
    present_pixels: np.ndarray,
    class_names: Sequence[str],
    masks: int,
) -> list[float]:
    """Median-frequency weights from every training mask, printed as a table.

    Thin and rare classes (VOC's bicycle and chair, CamVid's pole and sign)
    cover few pixels, so unweighted cross-entropy can ignore them and still
    fall; weighting each pixel by median(freq) / freq of its class (Eigen &
    Fergus 2015; SegNet, Sec. 3.2) makes every class count about equally.
    Void pixels are not counted. The counts come from `voc.class_pixel_counts`
    (reading every mask: seconds for a few hundred images, about a minute for
    VOC train) or, for a cache, `voc.count_class_pixels` of its masks.
    """
    weights = median_frequency_weights(class_pixels, present_pixels)
    total = max(int(class_pixels.sum()), 1)
    print(f"Median-frequency class weights from {masks} training masks:")
    print(f"  {'class':<16}{'pixels':>8}{'weight':>9}")
    for name, pixels, weight in zip(class_names, class_pixels, weights):
        print(f"  {name:<16}{pixels / total:8.2%}{weight:9.3f}")
    return [float(weight) for weight in weights]


# --------------------------------------------------------------------------
# Starting weights: --init-from
# --------------------------------------------------------------------------


def resumes(output_dir: str) -> bool:
    """Whether `output_dir` holds an unfinished run, which `fit` resumes.

    `BackupAndRestore` (see `make_callbacks`) keeps `backup/` until the run
    finishes and restores the weights, the optimizer and the epoch from it.
    """
    return os.path.isdir(os.path.join(output_dir, "backup"))


def backbone_weights(args: argparse.Namespace) -> str | None:
    """--backbone-weights, or None with --init-from: no download to overwrite."""
    return None if args.init_from else args.backbone_weights


def init_from(model: keras.Model, args: argparse.Namespace) -> list[str]:
    """Copy a trained model's weights (--init-from) into `model`, layer by name.

    Call it inside the strategy scope, after building and before compiling.
    Every layer of `model` whose namesake in the file holds variables of the
    same shapes is copied (`copy_weights_by_name`); the others keep their
    initialisation: the classifier when the number of classes differs (a
    VOC model fine-tuned on your classes), or FCN-16s's new pool4 scores
    when it starts from FCN-32s. Prints how many layers were copied and names
    the ones that were not. A file none of whose layers fits is an
    `InputError`. A resumed run copies nothing: `fit` restores its own
    weights from the backup. Returns the names of the copied layers.
    """
    if not args.init_from:
        return []
    if resumes(args.output_dir):
        print(f"Resuming: --init-from {args.init_from} is not applied again.")
        return []
    source = load_model(args.init_from)
    copied = copy_weights_by_name(source, model)
    if not copied:
        raise InputError(
            f"--init-from {args.init_from}: no layer of this {source.name} model "
            f"has the name and weight shapes of a layer of {model.name}; give a "
            "model of the same architecture."
        )
    targets = [layer.name for layer in model.layers if layer.weights]
    source_names = {layer.name for layer in source.layers if layer.weights}
    kept = [
        f"{name} ({'other shapes' if name in source_names else 'new'})"
        for name in targets
        if name not in copied
    ]
    print(
        f"Initialised {len(copied)} of {len(targets)} layers with weights from "
        f"{args.init_from} ({source.name}); not copied: {', '.join(kept) or 'none'}"
    )
    return copied


# --------------------------------------------------------------------------
# Optimizer and callbacks
# --------------------------------------------------------------------------


def make_optimizer(
    args: argparse.Namespace, total_steps: int
) -> keras.optimizers.Optimizer:
    """SGD with momentum or Adam, with the poly schedule of DeepLab (power 0.9).

    poly: lr * (1 - step / total_steps)^0.9 (DeepLab v2, Sec. 4.1), or the
    constant rate with `--lr-schedule constant`. Weight decay is decoupled
    from the gradient (Keras' `weight_decay`).
    """
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


class StopOnNaNLoss(keras.callbacks.Callback):
    """End training at the first NaN or infinite loss, with what to change.

    Keras' `TerminateOnNaN` only asks `fit` to stop at the end of the epoch,
    which then still validates and lets `BackupAndRestore` save the NaN
    weights, so a resumed run would start from them. Raising at once leaves
    history.csv, best.keras and the backup at the last finished epoch.
    """

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):
            raise TrainingDiverged(self.message(loss, batch))

    def message(self, loss: float, batch: int) -> str:
        args = self.args
        terms = "+".join(
            name if weight == 1 else f"{weight:g}*{name}"
            for name, weight in args.loss.items()
        )
        add_ce = f", or add cross-entropy: --loss '0.5*ce+{terms}'"
        hint = "" if "ce" in args.loss else add_ce
        return (
            f"The training loss became {loss} at step {batch + 1} of epoch "
            f"{self.epoch + 1} (--loss {terms}, --optimizer {args.optimizer}, "
            f"learning rate {args.learning_rate:g}), so training stopped. "
            f"{args.output_dir} keeps the epochs before it. Train again in a new "
            f"--output-dir with a lower --learning-rate{hint}."
        )


def make_callbacks(
    args: argparse.Namespace, metric: ConfusionMatrix, class_names: Sequence[str]
) -> list[keras.callbacks.Callback]:
    """The NaN stop, IoU table, best checkpoint, history.csv, resume, TensorBoard.

    `metric` is the `ConfusionMatrix` the model is compiled with.
    `ModelCheckpoint` keeps the epoch with the best validation mean IoU; a
    resumed run starts it from the best value already in history.csv. The
    resume backup comes after history.csv: an epoch counts as saved once
    both hold it, so a stop between the two (each written whole) resumes
    from the epoch before, and history.csv never misses an epoch.
    """
    output_dir = args.output_dir
    return [
        StopOnNaNLoss(args),  # First: ends the epoch before anything saves it.
        IoUReport(metric, class_names),  # Adds val_pixel_accuracy to the logs.
        ModelCheckpoint(
            os.path.join(output_dir, "best.keras"),
            monitor="val_mean_iou",
            mode="max",
            save_best_only=True,
            initial_value_threshold=results.best_val_mean_iou(output_dir),
        ),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=True),
        BackupAndRestore(os.path.join(output_dir, "backup")),
        *tensorboard(output_dir),
    ]


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' resume backup, written whole even when a stop arrives meanwhile."""

    def on_epoch_end(self, epoch, logs=None):
        with stops.deferred():
            super().on_epoch_end(epoch, logs)


class ModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' best checkpoint, written whole even when a stop arrives meanwhile."""

    def on_epoch_end(self, epoch, logs=None):
        with stops.deferred():
            super().on_epoch_end(epoch, logs)


def tensorboard(output_dir: str) -> list[keras.callbacks.Callback]:
    """TensorBoard's callback, or none where TensorFlow is not installed.

    Keras writes TensorBoard's logs with `tf.summary` on every backend; a
    machine with only JAX (the GPU machine of docs/gpu.md) trains without
    them, and history.csv and curves.png still hold the curves.
    """
    if not backend.tensorflow_installed():
        print("TensorBoard: off (TensorFlow is not installed); see history.csv.")
        return []
    return [keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard"))]


def batch_size_of(dataset) -> int:
    """Images per batch of a `tf.data` pipeline or a `keras.utils.PyDataset`."""
    if isinstance(dataset, keras.utils.PyDataset):
        return dataset.batch_size
    return dataset.element_spec[0].shape[0]


# --------------------------------------------------------------------------
# Fit, and what is saved
# --------------------------------------------------------------------------


@contextlib.contextmanager
def resumable(args: argparse.Namespace) -> Iterator[None]:
    """Open the run folder; Ctrl-C, SIGTERM and unreadable files end in one line.

    Ctrl-C or SIGTERM (`common.stops`) becomes `TrainingInterrupted`, whose
    message says what is saved and gives the command that resumes
    (`common.cli.run_cli` prints it). A file the input pipeline cannot read
    becomes a `DatasetError` that names the `verify` command, which checks
    every file of the split. A run folder this run made is removed again if
    it stops before its first epoch is saved: there is nothing in it to resume.
    """
    new_folder = args.chief and not os.path.isdir(args.output_dir)
    if args.chief:  # The other workers of a multi-worker run write nothing.
        results.open_run_folder(args.output_dir)
    try:
        with stops.handled(
            lambda cause: results.interruption_message(args, cause),
            exit_at_once=not args.chief,  # A worker that writes nothing.
        ):
            yield
    except BaseException as error:
        stop = stops.stop_behind(error)
        if stop is not None:
            message = stops.message(stop)  # First: it is raised no more.
            _remove_if_unused(args.output_dir, new_folder)
            raise TrainingInterrupted(message) from None
        _remove_if_unused(args.output_dir, new_folder)
        if os.environ.get("TF_CONFIG") and multiworker.is_peer_error(error):
            raise WorkerLost(
                multiworker.lost_worker_message(
                    str(error), os.environ["TF_CONFIG"], results.resume_command(args)
                )
            ) from None
        if backend.is_data_error(error):
            raise DatasetError(
                f"While reading the data: {voc.tf_error_message(error)}\n"
                "To check every file, run: "
                f"python -m common.cli verify {args.data_dir or '<data-dir>'} "
                f"--split {args.train_split}"
            ) from None
        raise


def _remove_if_unused(output_dir: str, new_folder: bool) -> None:
    """Remove a run folder this run made if no epoch was saved in it."""
    if new_folder and not results.history_rows(output_dir):
        shutil.rmtree(output_dir, ignore_errors=True)


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    *,
    epochs: int,
    steps_per_epoch: int,
    validation_data: tf.data.Dataset,
    validation_steps: int | None,
    callbacks: list[keras.callbacks.Callback],
    sync_bn: bool = False,
) -> keras.callbacks.History:
    """`model.fit` on a compiled model, with fit's arguments.

    Before the first step: with `sync_bn` and several replicas, batch norm
    computes its statistics over the global batch; the optimizer's slots are
    made (inside the first traced step they make TensorFlow trace it twice).
    Under `--strategy multiworker`, where Keras 3's fit fails, the custom loop
    of `common.multiworker` trains instead, with the same arguments. The
    returned history also holds `optimizer_steps` (steps taken so far, resumed
    ones included) and `train_ms_per_step` for results.json.
    """
    strategy = distribute.strategy_of(model)
    if sync_bn and strategy.num_replicas_in_sync > 1:
        synced = layers.synchronize_batch_norm(model)
        print(f"Synchronized {synced} batch norm layers across replicas (--sync-bn).")
    with strategy.scope():  # The strategy the model was built in.
        model.optimizer.build(model.trainable_variables)
    batch = batch_size_of(train_ds)
    print(
        f"{model.name}: {model.count_params():,} parameters; {steps_per_epoch} steps "
        f"of {batch} images per epoch"
    )
    timer = StepTimer()
    arguments = dict(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        validation_steps=validation_steps,
        callbacks=[*callbacks, timer],
    )
    if distribute.is_multi_worker(strategy):
        history = multiworker.fit(model, train_ds, **arguments)
    else:
        history = model.fit(
            train_ds,
            shuffle=False,  # The pipeline shuffles; Keras cannot shuffle it.
            verbose=console.progress_verbosity(),
            **arguments,
        )
    history.optimizer_steps = int(model.optimizer.iterations.numpy())
    history.train_ms_per_step = timer.median_ms()
    return history


def save_results(
    model: keras.Model,
    args: argparse.Namespace,
    dataset: voc.DatasetSpec,
    val_ds: tf.data.Dataset,
    history: keras.callbacks.History,
    metric: ConfusionMatrix,
) -> dict:
    """Score the best checkpoint on the validation split; write results and plots.

    Loads `best.keras`'s weights and evaluates them with the compiled
    `metric` (the multi-worker loop kept its best epoch's scores instead).
    Writes results.json, curves.png and predictions.png (on the chief only)
    and returns the results.
    """
    best_path = os.path.join(args.output_dir, "best.keras")
    best_model = model
    if distribute.is_multi_worker(distribute.strategy_of(model)):
        matrix, val_loss = history.best_matrix, history.best_val_loss
        if args.chief:  # The best epoch's weights, outside the strategy.
            best_model = multiworker.one_device_model(model, best_path)
    else:
        if os.path.isfile(best_path):
            model.load_weights(best_path)
        evaluation = model.evaluate(
            val_ds,
            steps=args.val_steps,
            return_dict=True,
            verbose=console.progress_verbosity(),
        )
        matrix, val_loss = metric.matrix, evaluation["loss"]
    run = results.run_results(model, args, dataset, matrix, val_loss, history)
    if args.chief:
        table = iou_table(matrix, dataset.class_names)
        print(f"\nBest model on {args.val_split}:\n{table}")
        results.write_results(args.output_dir, run)
        results.plot_run(best_model, args, dataset, val_ds)
        print(
            f"\nmean IoU {run['mean_iou']:.4f}, global accuracy "
            f"{run['pixel_accuracy']:.4f}, class-average accuracy "
            f"{run['class_average_accuracy']:.4f}; outputs in {args.output_dir}"
        )
        if args.image_scale != 1:
            print(
                f"These scores are on the masks resized by --image-scale "
                f"{args.image_scale:g}; on the full-size masks: python evaluate.py "
                f"--model {os.path.join(args.output_dir, 'best.keras')}"
            )
    return run
