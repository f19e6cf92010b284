"""What a person at the terminal sees: flag checks, --help, Ctrl-C, a quiet start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import deeplab_train
import fcn_train
import segnet_train
import unet_train
from common.errors import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [fcn_train, unet_train, deeplab_train, segnet_train]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda module: module.__name__)
def test_help_states_every_default(script):
    parser = script.make_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.dest == "help":
            continue  # Positional, store_true and --help explain themselves.
        text = formatter._expand_help(action)
        assert "default" in text.lower(), f"{action.option_strings}: {text}"
        assert "(default: None)" not in text, f"{action.option_strings}: {text}"


@pytest.mark.parametrize(
    "bad_flags, message",
    [
        (["--epochs", "-3"], "argument --epochs: must be an integer >= 1, not '-3'"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
        (["--crop-size", "0"], "argument --crop-size: must be an integer >= 1"),
        (["--filters", "0"], "argument --filters: must be an integer >= 1"),
        (["--learning-rate", "0"], "argument --learning-rate: must be a number > 0"),
        (["--momentum", "1.5"], "argument --momentum: must be a number in [0, 1)"),
        (
            ["--ignore-index", "300"],
            "argument --ignore-index: must be an integer 0-255",
        ),
        (
            ["--crop-size", "100"],
            "cannot take 100 pixels; the nearest sizes it takes are 96 or 112",
        ),
        (
            ["--padding", "valid", "--crop-size", "500"],
            "nearest sizes it takes are 492 or 508",
        ),
        (["--dataset", "pets"], "argument --dataset: invalid choice: 'pets'"),
    ],
)
def test_bad_flag_is_one_line_before_anything_runs(
    bad_flags, message, tmp_path, capsys
):
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        unet_train.main(["--output-dir", str(output_dir), *bad_flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1 and error.startswith(
        f"{os.path.basename(sys.argv[0])}"
    )
    assert not output_dir.exists()


def test_deeplab_checks_crop_against_output_stride(capsys):
    with pytest.raises(SystemExit):
        deeplab_train.parse_args(["--crop-size", "100", "--output-stride", "16"])
    assert "the nearest sizes it takes are 96 or 112" in capsys.readouterr().err


def test_missing_dataset_leaves_no_run_folder(tmp_path):
    output_dir = tmp_path / "run"
    argv = ["--data-dir", str(tmp_path / "VOC2012"), "--output-dir", str(output_dir)]
    with pytest.raises(DatasetError, match="voc_download.sh"):
        unet_train.main(argv)
    assert not output_dir.exists()


def wait_for(predicate, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.communicate()
            pytest.fail(f"run ended or timed out before the condition:\n{output}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "signum, cause", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")]
)
def test_ctrl_c_or_sigterm_prints_one_line_with_the_resume_command(
    signum, cause, shapes_dir, tmp_path, communicate_or_dump_stacks
):
    """SIGINT or SIGTERM after the first epoch: exit 130, one line; quiet start."""
    output_dir = tmp_path / "run"
    # fmt: off
    argv = [
        "--dataset", "shapes", "--data-dir", shapes_dir, "--filters", "4", "8",
        "--crop-size", "32", "--batch-size", "2", "--epochs", "1000",
        "--steps-per-epoch", "2", "--val-steps", "1", "--num-predictions", "0",
        "--output-dir", str(output_dir),
    ]
    # fmt: on
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.Popen(
        [sys.executable, "unet_train.py", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = output_dir / "history.csv"
    try:
        wait_for(
            lambda: history.exists() and len(history.read_text().splitlines()) >= 2,
            process,
            timeout=240,
        )
        process.send_signal(signum)
        stdout, stderr = communicate_or_dump_stacks(process, timeout=30)
    finally:
        process.kill()

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_lines = [line for line in stderr.splitlines() if line.strip()]
    assert last_lines[-1].startswith(f"Stopped by {cause}: ")
    assert "epochs are finished and saved" in last_lines[-1]
    assert "To resume: python unet_train.py --dataset shapes" in last_lines[-1]
    # A quiet start: no TensorFlow C++ log, and the first line says what runs.
    assert "cuInit" not in stderr and "cuda" not in stderr.lower()
    assert stdout.splitlines()[0] == (
        "1 device (CPU) · global batch 2 · learning rate 0.001 · float32"
    )
    # Not a terminal: one line per epoch, no progress-bar redraws.
    assert "\r" not in stdout and "\x1b[" not in stdout
