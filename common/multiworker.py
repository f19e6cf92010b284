"""Several machines: a custom training loop on `MultiWorkerMirroredStrategy`.

Keras 3's `model.fit` fails under that strategy (keras-team/keras#20585), so
`training.fit` hands `--strategy multiworker` runs to `fit` below, with the
same arguments; every other strategy trains with Keras' `fit`. The loop keeps
fit's recipe and outputs:

- Every worker runs every step on its slice of the global batch
  (`strategy.run`). The loss is the compiled one (`--loss`), averaged over
  the *whole global batch*: cross-entropy over its non-void pixels (optional
  class weights included), so each worker divides its sum by the count
  summed over workers; Keras' `apply_gradients` then sums the gradients over
  workers, and every worker applies the same update: one big batch, as on
  one device (`share_of_mean_loss` says which terms can only be averaged).
- Same compiled model, optimizer and poly schedule; batch norm synchronized
  (`training.set_up` forces `--sync-bn`), else each worker's moving
  statistics drift apart.
- The validation confusion matrix is summed over workers, so all agree on the
  mean IoU; the chief alone writes the outputs (`best.keras`, `history.csv`,
  TensorBoard) with fit's own callbacks, and `training.save_results` writes
  `results.json` and the plots from the best epoch this loop kept.
- Resume: after each epoch every worker saves a checkpoint (saving involves
  all workers, so one that skipped it would stall the others): the chief in
  the folder of fit's `BackupAndRestore` callback, which this checkpoint
  replaces, the others in a temporary folder they delete at once. Rerunning
  the same commands restores the chief's checkpoint and sends its values to
  the other workers, so only the chief's `--output-dir` matters.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import sys
import tempfile

import keras
import numpy as np

from common import console, distribute
from common.backend import tf
from common.constants import IGNORE_LABEL
from common.losses import SegmentationLoss, segmentation_loss
from common.metrics import (
    ConfusionMatrix,
    IoUReport,
    confusion_counts,
    mean_iou,
)

# Callbacks that write files or print tables: the chief's alone.
CHIEF_ONLY = (
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.CSVLogger,
    keras.callbacks.TensorBoard,
    IoUReport,
)


class LoopHistory(keras.callbacks.History):
    """fit's `History`, plus the best epoch's validation, which replaces a final
    evaluation (the chief alone holds best.keras)."""

    best_matrix: np.ndarray
    best_val_loss: float


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    *,
    epochs: int,
    steps_per_epoch: int,
    validation_data: tf.data.Dataset,
    validation_steps: int | None,
    callbacks: list[keras.callbacks.Callback],
) -> LoopHistory:
    """Train a model built and compiled under the strategy, as `model.fit` would.

    `callbacks` are fit's: the chief runs them all but `BackupAndRestore`
    (this loop's checkpoint goes into its folder instead); the other workers
    run only those that write nothing.
    """
    strategy = model.distribute_strategy
    num_classes = model.output_shape[-1]
    chief = distribute.is_chief(strategy)
    backup = next(
        callback
        for callback in callbacks
        if isinstance(callback, keras.callbacks.BackupAndRestore)
    )
    backup_dir = backup.backup_dir
    print(worker_description(strategy, chief, os.path.dirname(backup_dir)))
    train_step, val_step = make_step_functions(model, num_classes)
    train_batches = iter(distribute_dataset(strategy, train_ds))
    val_batches = distribute_dataset(strategy, validation_data)

    state = TrainingState(num_classes)
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=model.optimizer, **state.variables()
    )
    manager = tf.train.CheckpointManager(
        checkpoint, backup_dir if chief else tempfile.mkdtemp(), max_to_keep=1
    )
    if chief and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
    broadcast_from_chief(
        strategy,
        [*model.variables, *model.optimizer.variables, *state.variables().values()],
        chief,
    )
    start_epoch = int(state.epoch.numpy())
    if start_epoch:
        print(f"Resuming after epoch {start_epoch} (the chief's {backup_dir})")

    history = LoopHistory()
    report_metric = ConfusionMatrix(num_classes)  # For IoUReport, on the chief.
    callbacks = keras.callbacks.CallbackList(
        [history, *worker_callbacks(callbacks, chief, report_metric)],
        add_progbar=chief,
        model=model,
        verbose=console.progress_verbosity(),
        epochs=epochs,
        steps=steps_per_epoch,
    )
    model.stop_training = False  # TerminateOnNaN sets it, on every worker alike.
    callbacks.on_train_begin()
    for epoch in range(start_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        logs = train_epoch(train_step, train_batches, steps_per_epoch, callbacks)
        val_loss, val_matrix = validate(val_step, val_batches, validation_steps)
        logs.update(val_loss=val_loss, val_mean_iou=float(mean_iou(val_matrix)))
        state.end_epoch(epoch, logs["val_mean_iou"], val_loss, val_matrix)
        save_checkpoint(manager, chief)  # Before the outputs, as fit does.
        report_metric.set_matrix(val_matrix)
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end()
    # Finished: nothing to resume (fit's BackupAndRestore deletes its folder too).
    shutil.rmtree(manager.directory, ignore_errors=True)
    history.best_matrix = state.best_matrix.numpy()
    history.best_val_loss = float(state.best_val_loss.numpy())
    return history


# What a collective raises on the survivors when a worker dies ("Socket
# closed", "Connection reset", a timeout): `lost_worker_message` explains it.
PEER_ERRORS = (
    "UnavailableError",
    "CancelledError",
    "AbortedError",
    "DeadlineExceededError",
    "InternalError",
)


def is_peer_error(error: BaseException) -> bool:
    """Whether `error` is one of `PEER_ERRORS` (TensorFlow's, so only under it)."""
    if sys.modules.get("tensorflow") is None:
        return False
    return isinstance(error, tuple(getattr(tf.errors, name) for name in PEER_ERRORS))


def lost_worker_message(error_text: str, tf_config: str, command: str) -> str:
    """One line for a survivor of a lost worker: which, and the commands to resume.

    TensorFlow names the peer that failed in its error text
    (`/job:worker/replica:0/task:1`); this worker's own task is left out.
    `command` is this worker's command line: every worker reruns it with its
    own index in `TF_CONFIG`, and the loop resumes after the chief's last
    saved epoch.
    """
    config = json.loads(tf_config)
    own_task = (config["task"]["type"], config["task"]["index"])
    named = re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", error_text)
    lost = sorted({(job, int(index)) for job, index in named} - {own_task})
    lost_names = " and ".join(f"{job} {index}" for job, index in lost)
    resume = [
        f"TF_CONFIG={shlex.quote(json.dumps({**config, 'task': task}))} {command}"
        for job, addresses in config["cluster"].items()
        for task in ({"type": job, "index": index} for index in range(len(addresses)))
    ]
    return (
        f"Lost {lost_names or 'another worker'} of the cluster, so "
        f"{own_task[0]} {own_task[1]} stopped too; the chief's --output-dir keeps "
        f"every finished epoch. To resume, run on each worker: {' ; '.join(resume)}"
    )


def worker_description(
    strategy: tf.distribute.Strategy, chief: bool, output_dir: str
) -> str:
    """One line: which worker this is and who writes the outputs."""
    resolver = strategy.cluster_resolver
    workers = sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values())
    task = f"{resolver.task_type or 'worker'} {resolver.task_id or 0}"
    role = f"the chief: outputs go to {output_dir}" if chief else "writes no outputs"
    return f"This is {task} of {max(workers, 1)} worker(s), {role}."


def distribute_dataset(
    strategy: tf.distribute.Strategy, dataset: tf.data.Dataset
) -> tf.distribute.DistributedDataset:
    """Split each global batch of `dataset` into one slice per worker.

    Auto-shard policy DATA: every worker runs the whole pipeline (same files,
    same seeds) and keeps its own slice of each batch, so together the workers
    see exactly the batches of a one-device run. (FILE sharding would need the
    data split into several files, such as TFRecords.)
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def make_step_functions(model: keras.Model, num_classes: int):
    """Return `train_step(iterator)` and `val_step(batch)`, summed over workers.

    train_step -> (loss of the global batch, its training confusion matrix);
    val_step -> (loss of the global batch, its image count, confusion matrix).
    Batches are `(images, masks)` or `(images, masks, pixel_weights)`.
    """
    strategy = model.distribute_strategy
    sums_and_counts = loss_sums_and_counts(model.loss)

    def share_of_mean_loss(masks, logits, weights):
        """This worker's part of the mean loss of the global batch.

        Each term's sum is divided by its count summed over workers, so that
        the parts add up to exactly the loss of the whole global batch on one
        device: sum(weight * cross-entropy) / non-void pixels, and likewise
        for focal and (over images) lovasz_image. Dice and per-batch Lovász
        do not split into per-pixel sums: each worker counts 1, so they give
        the mean of the workers' own values (the workers' batches are equal).
        """
        sums, counts = sums_and_counts(masks, logits, weights)
        context = tf.distribute.get_replica_context()
        all_counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        return tf.reduce_sum(tf.math.divide_no_nan(sums, all_counts))

    def train_one_replica(batch):
        images, masks, weights = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = share_of_mean_loss(masks, logits, weights)
            scaled_loss = model.optimizer.scale_loss(loss)  # float16 loss scaling.
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        # Keras sums the gradients over workers before applying them.
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, confusion_counts(masks, logits, num_classes)

    def validate_one_replica(batch):
        images, masks, _ = keras.utils.unpack_x_y_sample_weight(batch)
        logits = model(images, training=False)
        loss = share_of_mean_loss(masks, logits, None)
        images_count = tf.cast(tf.shape(images)[0], tf.float32)
        return loss, images_count, confusion_counts(masks, logits, num_classes)

    def sum_over_workers(per_replica):
        return [
            strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for value in per_replica
        ]

    # No autograph: the steps have no Python control flow on tensors, and
    # converting the model's code would slow the first step (as Keras' own).
    @tf.function(autograph=False)
    def train_step(iterator):
        return sum_over_workers(strategy.run(train_one_replica, args=(next(iterator),)))

    @tf.function(autograph=False)
    def val_step(batch):
        return sum_over_workers(strategy.run(validate_one_replica, args=(batch,)))

    return train_step, val_step


def loss_sums_and_counts(loss: keras.losses.Loss):
    """`(masks, logits, weights) -> (sums, counts)` of the compiled loss.

    The loss of a batch is sum(sums / counts), vectors of one entry per term.
    Cross-entropy alone (`segmentation_loss()`, the default) is Keras' own
    loss summed over the non-void pixels, and counts those pixels; a
    `SegmentationLoss` gives its terms' `sums_and_counts`.
    """
    if isinstance(loss, SegmentationLoss):
        return loss.sums_and_counts
    if not isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        raise ValueError(
            "The multi-worker loop trains with common.losses.make_loss's "
            f"losses, not {type(loss).__name__}."
        )
    loss_sum = segmentation_loss(reduction="sum")  # Sum over non-void pixels.

    def cross_entropy_sum_and_count(masks, logits, weights):
        pixels = tf.reduce_sum(tf.cast(masks != IGNORE_LABEL, tf.float32))
        return loss_sum(masks, logits, sample_weight=weights)[None], pixels[None]

    return cross_entropy_sum_and_count


def train_epoch(train_step, batches, steps: int, callbacks) -> dict:
    """One epoch of training; returns fit's logs: mean loss and training mean IoU."""
    losses, matrix = [], 0
    for step in range(steps):
        callbacks.on_train_batch_begin(step)
        loss, counts = train_step(batches)
        losses.append(float(loss))
        matrix = matrix + counts.numpy().astype(np.int64)  # int32 per batch.
        callbacks.on_train_batch_end(step, {"loss": float(np.mean(losses))})
        if callbacks.model.stop_training:
            break
    return {"loss": float(np.mean(losses)), "mean_iou": float(mean_iou(matrix))}


def validate(val_step, batches, val_steps: int | None) -> tuple[float, np.ndarray]:
    """Validation loss and confusion matrix, the same on every worker.

    The loss is each batch's mean weighted by its number of images, as Keras'
    `evaluate` reports it; the matrix counts every non-void pixel once.
    """
    weighted_loss, images, matrix = 0.0, 0.0, 0
    for batch in itertools.islice(batches, val_steps):
        loss, count, counts = val_step(batch)
        weighted_loss += float(loss) * float(count)
        images += float(count)
        matrix = matrix + counts.numpy().astype(np.int64)  # int32 per batch.
    return weighted_loss / max(images, 1.0), np.asarray(matrix, np.int64)


class TrainingState:
    """What a resumed run needs besides model and optimizer: epochs done, best epoch.

    The best epoch's validation loss and confusion matrix become results.json,
    so the loop needs no final evaluation pass (the chief alone holds best.keras).
    """

    def __init__(self, num_classes: int):
        self.epoch = tf.Variable(0, dtype=tf.int64)
        self.best_mean_iou = tf.Variable(-np.inf, dtype=tf.float64)
        self.best_val_loss = tf.Variable(np.nan, dtype=tf.float64)
        self.best_matrix = tf.Variable(tf.zeros((num_classes, num_classes), tf.int64))

    def variables(self) -> dict[str, tf.Variable]:
        return {
            "epoch": self.epoch,
            "best_mean_iou": self.best_mean_iou,
            "best_val_loss": self.best_val_loss,
            "best_matrix": self.best_matrix,
        }

    def end_epoch(
        self, epoch: int, val_mean_iou: float, val_loss: float, val_matrix: np.ndarray
    ) -> None:
        """Count the epoch; keep its validation if its mean IoU is the best yet.

        The same rule as the chief's `ModelCheckpoint(save_best_only=True)`.
        """
        self.epoch.assign(epoch + 1)
        if val_mean_iou > self.best_mean_iou.numpy():
            self.best_mean_iou.assign(val_mean_iou)
            self.best_val_loss.assign(val_loss)
            self.best_matrix.assign(val_matrix)


def broadcast_from_chief(
    strategy: tf.distribute.Strategy, variables: list, chief: bool
) -> None:
    """Give every worker the chief's values of `variables` (a sum in which the
    other workers add zeros), so that only the chief's checkpoint is read."""

    def chief_values():
        context = tf.distribute.get_replica_context()
        return [  # One all-reduce per variable: a list must share one dtype.
            context.all_reduce(
                tf.distribute.ReduceOp.SUM,
                tf.identity(variable) if chief else tf.zeros_like(variable),
            )
            for variable in variables
        ]

    summed = tf.function(lambda: strategy.run(chief_values), autograph=False)()
    for variable, value in zip(variables, summed):
        variable.assign(strategy.experimental_local_results(value)[0])


def save_checkpoint(manager: tf.train.CheckpointManager, chief: bool) -> None:
    """Every worker saves (all take part); the others delete theirs at once."""
    manager.save()
    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)


def worker_callbacks(
    callbacks: list[keras.callbacks.Callback],
    chief: bool,
    report_metric: ConfusionMatrix,
) -> list[keras.callbacks.Callback]:
    """fit's callbacks as this worker runs them in the loop.

    `BackupAndRestore` works only inside `fit`: the loop's checkpoint
    replaces it. The chief's IoU table reads `report_metric`, which the loop
    fills with the validation counts summed over workers. The other workers
    keep only what writes nothing (TerminateOnNaN, so that all stop together,
    and the step timer).
    """
    kept = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            continue
        if isinstance(callback, CHIEF_ONLY) and not chief:
            continue
        if isinstance(callback, IoUReport):
            callback = IoUReport(report_metric, callback.class_names)
        kept.append(callback)
    return kept


def one_device_model(model: keras.Model, best_path: str) -> keras.Model:
    """The best model outside the strategy, so the chief can predict on its own."""
    if os.path.isfile(best_path):
        return keras.saving.load_model(best_path, compile=False)
    copy = keras.models.clone_model(model)  # No best epoch (NaN): the last weights.
    copy.set_weights(model.get_weights())
    return copy
