"""unet_train.main end to end on tiny data: outputs, learning, resuming, errors."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import unet_train
from common import training
from common.errors import TrainingDiverged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {
    "mean_iou",
    "pixel_accuracy",
    "per_class_iou",
    "epochs",
    "final_train_loss",
    "argv",
}


def tiny_argv(shapes_dir, output_dir, *extra):
    return [
        "--dataset",
        "shapes",
        "--data-dir",
        shapes_dir,
        "--output-dir",
        str(output_dir),
        "--filters",
        "8",
        "16",
        "32",
        "64",
        "--crop-size",
        "64",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "5",
        "--val-steps",
        "2",
        "--num-predictions",
        "2",
        *extra,
    ]


def read_history(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.backends
def test_main_trains_and_writes_every_output(shapes_dir, tmp_path):
    argv = tiny_argv(shapes_dir, tmp_path, "--epochs", "4", "--learning-rate", "0.003")
    results = unet_train.main(argv)

    with open(tmp_path / "results.json") as f:
        assert json.load(f) == results
    assert RESULT_KEYS <= results.keys() and results["argv"] == argv
    assert set(results["per_class_iou"]) == {
        "background",
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
    }
    assert results["optimizer_steps"] == 20
    # The scores are those of the best epoch's checkpoint, evaluated again.
    best_epoch = max(float(row["val_mean_iou"]) for row in read_history(tmp_path))
    assert results["mean_iou"] == pytest.approx(best_epoch, abs=1e-6)
    # What the run used, beside argv: after defaults and scaling.
    settings, used = results["settings"], results["training"]
    assert settings["learning_rate"] == 0.003 and settings["global_batch_size"] == 4
    assert settings["crop_size"] == 64 and settings["padding"] == "same"
    assert used["loss"]["ignore_class"] == 255 and used["optimizer"]["class"] == "Adam"
    assert used["backend"] == keras.backend.backend()  # CI: TensorFlow, then JAX.
    assert used["batch_norm"] == {
        "layers": 18,
        "trained": 18,
        "momentum": [0.9],
        "synchronized": False,
    }
    assert results["train_ms_per_step"] > 0  # Median of steps 2-20.
    for name in ("best.keras", "curves.png", "predictions.png", "history.csv"):
        assert os.path.isfile(tmp_path / name), name
    assert os.listdir(tmp_path / "tensorboard")
    assert not os.path.exists(tmp_path / "backup")  # Finished runs leave no backup.
    losses = [float(row["loss"]) for row in read_history(tmp_path)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert "val_pixel_accuracy" in read_history(tmp_path)[0]


class StopBeforeEpoch(keras.callbacks.Callback):
    """Simulates a run killed after `epoch` finished epochs."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.backends
def test_interrupted_run_resumes_where_it_stopped(shapes_dir, tmp_path, monkeypatch):
    argv = tiny_argv(shapes_dir, tmp_path, "--epochs", "3")
    make_callbacks = training.make_callbacks
    monkeypatch.setattr(
        training, "make_callbacks", lambda *a: make_callbacks(*a) + [StopBeforeEpoch(2)]
    )
    with pytest.raises(training.TrainingInterrupted, match="2 of 3 epochs"):
        unet_train.main(argv)
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0", "1"]
    assert os.path.isdir(tmp_path / "backup")

    monkeypatch.setattr(training, "make_callbacks", make_callbacks)
    results = unet_train.main(argv)

    assert [row["epoch"] for row in read_history(tmp_path)] == ["0", "1", "2"]
    assert results["epochs_this_run"] == 1
    assert results["optimizer_steps"] == 3 * 5  # Optimizer state came back too.


class PoisonWeightsAtEpoch(keras.callbacks.Callback):
    """Makes every weight NaN when `epoch` begins, so its first loss is NaN."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, weight.dtype))


@pytest.mark.backends
def test_nan_loss_stops_before_anything_saves_nan_weights(
    shapes_dir, tmp_path, monkeypatch
):
    argv = tiny_argv(shapes_dir, tmp_path, "--epochs", "3", "--loss", "dice")
    make_callbacks = training.make_callbacks
    monkeypatch.setattr(
        training,
        "make_callbacks",
        lambda *a: make_callbacks(*a) + [PoisonWeightsAtEpoch(1)],
    )
    with pytest.raises(TrainingDiverged) as raised:
        unet_train.main(argv)

    message = str(raised.value)
    assert "step 1 of epoch 2" in message and "--loss '0.5*ce+dice'" in message
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0"]
    best = keras.saving.load_model(str(tmp_path / "best.keras"), compile=False)
    assert all(np.isfinite(w).all() for w in best.get_weights())
    assert os.path.isdir(tmp_path / "backup")  # Epoch 1, not the NaN weights.


def test_command_line_error_has_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "unet_train.py", "--data-dir", str(tmp_path / "missing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0
    assert "error:" in process.stderr and "missing" in process.stderr
    assert "Traceback" not in process.stderr


def test_every_flag_is_documented(capsys):
    with pytest.raises(SystemExit) as exit_info:
        unet_train.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--padding",
        "--filters",
        "--dataset",
        "--epochs",
        "--output-dir",
        "--crop-size",
        "--ignore-index",
        "--lr-schedule",
        "--seed",
    ):
        assert flag in help_text
    for action in unet_train.make_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"
