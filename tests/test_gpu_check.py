"""bench/gpu_check.py: its CPU dry run end to end, the shell wrapper, the GPU flags.

The GPU run itself needs a GPU; these run every line of it that a CPU can, so
the one-shot measurement still works on the day a machine with a GPU is lent.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import unet_train
from bench import gpu_check
from bench.harness import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURED = ("ms_step", "train_ips", "infer_ips", "peak_mb")
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def test_dry_run_measures_every_model_and_mode_and_the_demo(tmp_path):
    gpu_check.main(["--dry-run", str(tmp_path)])

    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    rows = {(row["model"], row["mode"]): row for row in report["rows"]}
    assert list(rows) == [
        (model, mode)
        for mode in gpu_check.DRY_RUN_MODES
        for model in gpu_check.DRY_RUN_MODELS
    ]
    for row in rows.values():
        assert "error" not in row and "skipped" not in row, row
        assert all(row[key] > 0 for key in MEASURED), row
    # On CPU, --mixed-precision's policy is bfloat16 (float16 is slow there).
    mixed = "mixed_float16" if HAS_GPU else "mixed_bfloat16"
    assert rows["unet", "float32"]["policy"] == "float32"
    assert rows["unet", "mixed"]["policy"] == mixed

    demo = report["demo"]
    assert "wall_s" in demo, demo
    assert demo["wall_s"] > 0 and 0 <= demo["mean_iou"] <= 1
    assert demo["command"].startswith("python unet_train.py --dataset shapes")
    assert (tmp_path / "demo_results.json").is_file()

    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith(f"# GPU check: {report['device']['name']}\n")
    assert HAS_GPU or report["device"]["name"] == f"CPU x{os.cpu_count()}"
    assert f"| unet | mixed | {mixed} |" in table
    assert f"mean IoU {demo['mean_iou']:.3f}" in table


def test_shell_script_writes_skip_notes_when_the_budget_is_spent(tmp_path):
    out = tmp_path / "out"
    script = os.path.join(ROOT, "bench", "gpu_check.sh")
    command = ["bash", script, "--no-install", str(out), "--dry-run", "--budget-s", "0"]
    environment = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    with open(out / "gpu_check.json") as f:
        report = json.load(f)
    assert "budget was spent" in report["demo"]["skipped"]
    assert len(report["rows"]) == len(gpu_check.DRY_RUN_MODES)
    assert all("budget was spent" in row["skipped"] for row in report["rows"])
    heading = f"# GPU check: {report['device']['name']}\n"
    assert (out / "gpu_check.md").read_text().startswith(heading)
    assert f"Device: {report['device']['name']}" in (out / "gpu_check.log").read_text()


def test_gpu_run_defaults_to_every_model_and_mode_at_h200_sizes():
    args = gpu_check.parse_args(["out"])
    assert args.models == list(MODELS) and args.modes == list(gpu_check.MODES)
    assert (args.crop_size, args.batch_size, args.steps) == (512, 8, 10)
    assert args.budget_s == 420

    dry = gpu_check.parse_args(["out", "--dry-run", "--crop-size", "64"])
    assert dry.models == gpu_check.DRY_RUN_MODELS
    assert dry.crop_size == 64
    assert dry.batch_size == gpu_check.DRY_RUN_SIZES["batch_size"]

    chosen = gpu_check.parse_args(["out", "--models", "fcn8s", "--modes", "xla"])
    assert (chosen.models, chosen.modes) == (["fcn8s"], ["xla"])


@pytest.mark.parametrize("mode", list(gpu_check.MODES))
def test_each_mode_reaches_train_speed_as_its_flags(mode):
    args = gpu_check.parse_args(["out"])
    speed_args = gpu_check.speed_args_for(args, mode)
    assert speed_args.jit_compile is mode.endswith("xla")
    assert (speed_args.crop_size, speed_args.batch_size) == (512, 8)
    assert speed_args.steps == 10 and speed_args.no_peer


def test_demo_is_the_readme_command():
    argv = gpu_check.demo_argv()
    args = unet_train.parse_args(argv)
    assert (args.dataset, args.epochs, args.filters) == ("shapes", 8, [16, 32, 64, 128])


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_stops_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        gpu_check.main([str(tmp_path)])
    assert "sees no GPU" in str(stop.value) and "\n" not in str(stop.value)
    assert not os.listdir(tmp_path)
