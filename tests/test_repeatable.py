"""--seed and --deterministic: two runs with one seed give the same numbers."""

import csv
import json
import math
import os

import pytest
import tensorflow as tf

# Op determinism is global to the process and has no public switch back;
# the fixture below turns it off again so that later tests run as usual.
from tensorflow.python.framework import config as tf_config

import deeplab_train
import fcn_train
import segnet_train
import unet_train

SCORES = (
    "mean_iou",
    "pixel_accuracy",
    "val_loss",
    "final_train_loss",
    "per_class_iou",
    "confusion_matrix",
)


@pytest.fixture()
def op_determinism():
    """Let a test enable op determinism (--deterministic), and turn it off after."""
    yield
    tf_config.disable_op_determinism()


def tiny_argv(shapes_dir, output_dir, *extra):
    return [
        "--dataset",
        "shapes",
        "--data-dir",
        shapes_dir,
        "--output-dir",
        str(output_dir),
        "--crop-size",
        "32",
        "--batch-size",
        "2",
        "--steps-per-epoch",
        "1",
        "--val-steps",
        "1",
        "--num-predictions",
        "0",
        *extra,
    ]


def run_numbers(output_dir):
    """Every number of a run: history.csv's rows, results.json's scores."""
    with open(os.path.join(output_dir, "history.csv")) as f:
        history = list(csv.DictReader(f))
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    return history, {key: results[key] for key in SCORES}


def train_unet_twice(shapes_dir, tmp_path, *extra):
    argv = [
        "--filters",
        *("4", "8", "16", "32"),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "3",
        "--seed",
        "7",
        *extra,
    ]
    for run in ("first", "second"):
        unet_train.main(tiny_argv(shapes_dir, tmp_path / run, *argv))
    return run_numbers(tmp_path / "first"), run_numbers(tmp_path / "second")


def test_one_seed_with_deterministic_gives_identical_numbers(
    shapes_dir, tmp_path, op_determinism
):
    first, second = train_unet_twice(shapes_dir, tmp_path, "--deterministic")
    history, scores = first
    assert len(history) == 2 and scores["final_train_loss"] > 0
    assert first == second  # Exactly: every loss, IoU and confusion count.


@pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="CPU only: GPU needs the flag"
)
def test_on_cpu_one_seed_gives_identical_numbers_without_the_flag(shapes_dir, tmp_path):
    first, second = train_unet_twice(shapes_dir, tmp_path)
    assert first == second


@pytest.mark.parametrize(
    "script, model_argv",
    [
        (
            fcn_train,
            ["--variant", "8s", "--width", "0.0625", "--backbone-weights", "none"],
        ),
        (segnet_train, ["--variant", "basic"]),
        (
            deeplab_train,
            [
                *("--variant", "v3plus", "--resnet-blocks", "1", "1", "1", "1"),
                *(
                    "--head-filters",
                    "8",
                    "--backbone-weights",
                    "none",
                    "--no-freeze-bn",
                ),
            ],
        ),
    ],
    ids=["fcn", "segnet", "deeplab"],
)
@pytest.mark.filterwarnings("ignore:Training batch norm with batches")
def test_every_script_trains_with_deterministic_ops(
    shapes_dir, tmp_path, op_determinism, script, model_argv
):
    """No op of these models (and U-Net, above) lacks a deterministic CPU kernel."""
    argv = tiny_argv(shapes_dir, tmp_path, *model_argv, "--epochs", "1")
    results = script.main([*argv, "--deterministic"])
    assert tf_config.is_op_determinism_enabled()
    assert math.isfinite(results["final_train_loss"])
