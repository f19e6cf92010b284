"""common/cli.py: flag types, the crop check, `verify`, and what each tool loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_STACK = ("common.training", "common.losses", "common.multiworker")


def test_backbone_weights_none_is_none_in_any_case():
    assert cli.backbone_weights("none") is None
    assert cli.backbone_weights("None") is None
    assert cli.backbone_weights("imagenet") == "imagenet"
    assert cli.backbone_weights("runs/a/best.keras") == "runs/a/best.keras"


def test_crop_check_names_the_nearest_size(capsys):
    parser = cli.ArgumentParser(prog="train")
    cli.check_crop_size(parser, 64, lambda size: -(-size // 32) * 32)  # Fits.
    with pytest.raises(SystemExit) as exit_info:
        cli.check_crop_size(parser, 65, lambda size: -(-size // 32) * 32)
    assert exit_info.value.code == 2
    assert "cannot take 65 pixels; the nearest sizes it takes are 64 or 96" in (
        capsys.readouterr().err
    )


def test_verify_command_checks_a_split(shapes_dir):
    process = subprocess.run(
        [sys.executable, "-m", "common.cli", "verify", shapes_dir, "--split", "val"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert "all readable, sizes and labels valid" in process.stdout
    assert "background" in process.stdout


@pytest.mark.parametrize("tool", ["evaluate", "predict", "export"])
def test_tools_that_only_predict_do_not_load_training(tool):
    code = (
        f"import sys, {tool}; print([m for m in {TRAINING_STACK} if m in sys.modules])"
    )
    process = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "[]", process.stdout
