"""Every path a user types is checked first: one line that names it and says what
to do, exit status 1, no traceback (`common.cli.run_cli` prints `InputError`s)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

import deeplab_train
import evaluate
import export
import fcn_train
import predict
import unet_train
from common import training, voc
from common.errors import DatasetError, InputError, TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_pasted_time_lists_the_real_run_folders(tmp_path, monkeypatch):
    (tmp_path / "runs" / "unet-shapes-20261201-204455").mkdir(parents=True)
    (tmp_path / "runs" / "fcn8s-voc-20261130-101010").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        evaluate.main(["--model", "runs/unet-shapes-TIME/best.keras"])
    message = str(error.value)
    assert message.startswith("--model runs/unet-shapes-TIME/best.keras: no such")
    assert "Closest in runs/: runs/unet-shapes-20261201-204455." in message
    assert "fcn8s" not in message


def test_the_command_line_prints_one_line_and_exits_1(tmp_path):
    quiet = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.run(
        [sys.executable, "evaluate.py", "--model", str(tmp_path / "nope.keras")],
        cwd=ROOT,
        env=quiet,  # As a user has it: the script itself hides TensorFlow's log.
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1
    assert process.stderr.strip().splitlines() == [
        f"error: --model {tmp_path / 'nope.keras'}: no such file or folder. "
        "Give a .keras file written by training."
    ]
    assert process.stdout == ""  # Not even a wrong "Scoring ..." line first.


def test_a_folder_where_a_model_file_belongs(tmp_path):
    with pytest.raises(InputError, match="this is a folder; give a .keras file"):
        evaluate.main(["--model", str(tmp_path)])


def test_a_truncated_model_file_is_named(tmp_path):
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs)).save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"Cannot load .*cut\.keras as a Keras model"):
        export.main(["--model", str(tmp_path / "cut.keras"), "--format", "onnx"])


def test_predict_checks_model_and_every_input_first(tmp_path):
    with pytest.raises(InputError, match="--model .*nope.onnx: no such file"):
        predict.main(["--model", str(tmp_path / "nope.onnx"), str(tmp_path)])
    (tmp_path / "m.keras").write_bytes(b"")  # Never loaded: the input is missing.
    with pytest.raises(InputError, match="input .*a.jpg: no such file"):
        predict.main(["--model", str(tmp_path / "m.keras"), str(tmp_path / "a.jpg")])


def test_training_checks_weight_files_before_any_work(tmp_path):
    missing = str(tmp_path / "fcn32s" / "best.keras")
    with pytest.raises(InputError, match="--init-from .*: no such file"):
        fcn_train.main(["--init-from", missing, "--output-dir", str(tmp_path / "r")])
    with pytest.raises(InputError, match="--backbone-weights .*vgg.h5: no such"):
        deeplab_train.parse_args(["--backbone-weights", str(tmp_path / "vgg.h5")])
    assert not (tmp_path / "r").exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(InputError, match="--output-dir .*notes.txt: this is a file"):
        unet_train.main(["--output-dir", str(tmp_path / "notes.txt")])


def test_a_corrupt_label_names_the_label_file(shapes_dir, tmp_path):
    data_dir = shutil.copytree(shapes_dir, tmp_path / "shapes")
    mask = data_dir / "SegmentationClass" / "shapes_00005.png"
    mask.write_bytes(np.random.default_rng(0).bytes(500))
    pairs = voc.list_pairs(str(data_dir), "train")
    with pytest.raises(DatasetError) as error:
        voc.image_sizes(pairs)
    message = str(error.value)
    assert message.startswith(f"Cannot read '{mask}'") and "JPEGImages" not in message
    assert "python -m common.cli verify" in message


def test_a_missing_folder_of_your_own_data_gets_folder_advice(tmp_path):
    argv = ["--dataset", "folder", "--data-dir", str(tmp_path / "mine")]
    with pytest.raises(DatasetError) as error:
        unet_train.main([*argv, "--num-classes", "3"])
    assert "SPLIT/images/ and SPLIT/masks/" in str(error.value)
    assert "voc_download" not in str(error.value)


def tiny_run(shapes_dir, output_dir, *extra):
    # fmt: off
    return [
        "--dataset", "shapes", "--data-dir", shapes_dir, "--filters", "4", "8",
        "--crop-size", "32", "--batch-size", "4", "--steps-per-epoch", "2",
        "--val-steps", "1", "--num-predictions", "0", "--output-dir", str(output_dir),
        *extra,
    ]
    # fmt: on


class StopAtEpoch(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt`, or sends this process SIGTERM, at `epoch`."""

    def __init__(self, epoch: int, sigterm: bool = False):
        super().__init__()
        self.epoch, self.sigterm = epoch, sigterm

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            if self.sigterm:
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt


def stop_at(monkeypatch, epoch: int, sigterm: bool = False) -> None:
    make_callbacks = training.make_callbacks
    monkeypatch.setattr(
        training,
        "make_callbacks",
        lambda *a: make_callbacks(*a) + [StopAtEpoch(epoch, sigterm)],
    )


def test_ctrl_c_before_the_first_epoch_leaves_no_folder(
    shapes_dir, tmp_path, monkeypatch
):
    stop_at(monkeypatch, 0)
    with pytest.raises(TrainingInterrupted, match="there is nothing to resume"):
        unet_train.main(tiny_run(shapes_dir, tmp_path / "run", "--epochs", "2"))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers live in the main thread",
)
def test_sigterm_ends_like_ctrl_c_with_the_resume_command(
    shapes_dir, tmp_path, monkeypatch
):
    handler = signal.getsignal(signal.SIGTERM)
    stop_at(monkeypatch, 1, sigterm=True)
    with pytest.raises(TrainingInterrupted) as stopped:
        unet_train.main(tiny_run(shapes_dir, tmp_path / "run", "--epochs", "3"))
    assert str(stopped.value).startswith("Stopped by SIGTERM: 1 of 3 epochs")
    assert "To resume: python" in str(stopped.value)
    assert (tmp_path / "run" / "backup").is_dir()
    assert signal.getsignal(signal.SIGTERM) == handler  # Restored afterwards.
