"""One GPU measurement, run once: float32, mixed precision and XLA for every model.

    bash bench/gpu_check.sh runs/gpu-check            # fresh machine: install, run
    python bench/gpu_check.py runs/gpu-check          # requirements installed
    python bench/gpu_check.py --dry-run /tmp/check    # CPU, tiny sizes, about 1 min

It prints the GPU (nvidia-smi, TensorFlow's devices, the CUDA that TensorFlow
was built with), runs the README's demo command for its wall time and mean
IoU, then, for each mode and each model of `bench/harness.py`, calls
`bench/train_speed.py`'s `measure` in a fresh process: training ms/step and
images/s, inference images/s, peak memory. The modes:

    float32     the scripts' default
    mixed       `--mixed-precision`'s policy: mixed_float16 on GPU; in the dry
                run on CPU mixed_bfloat16, as the scripts use there (float16
                kernels are slow or missing on CPU for some ops)
    xla         `model.compile(jit_compile=True)`
    mixed+xla   both

The demo goes first and the modes run in turn over all models, so a run that
spends its `--budget-s` loses the last modes (XLA's compilations, the slowest
to start), not a model or the demo. A measurement is started only while the
budget has room for one as long as the longest so far; the rest are written
down as skipped. After every measurement OUT_DIR/gpu_check.json and
OUT_DIR/gpu_check.md (a table of model x mode, the GPU named in its heading)
are written again, so a run that is stopped or crashes keeps what it measured.

`--dry-run` takes the same path on CPU at tiny sizes (DRY_RUN_* below): one
model, float32 and mixed, and a one-step demo, for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import console  # noqa: F401, E402  (first: TensorFlow loads quietly)

# isort: split
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import unet_train  # noqa: E402
from bench import train_speed  # noqa: E402
from bench.harness import MODELS, device_name, in_fresh_process  # noqa: E402
from common import shapes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

MODES = {
    "float32": {"mixed_precision": False, "jit_compile": False},
    "mixed": {"mixed_precision": True, "jit_compile": False},
    "xla": {"mixed_precision": False, "jit_compile": True},
    "mixed+xla": {"mixed_precision": True, "jit_compile": True},
}
# Sized for one H200 (141 GB): a VOC-sized crop at the scripts' batch of 8.
# `matmul_size` is the float32 product that the "of matmul" share is taken of.
GPU_SIZES = {"crop_size": 512, "batch_size": 8, "steps": 10, "matmul_size": 2048}
# The dry run: the GPU run's path on 2 CPU cores in about a minute. One model,
# and no XLA: compiling a U-Net's train step takes 2 CPU cores half a minute.
DRY_RUN_SIZES = {"crop_size": 32, "batch_size": 1, "steps": 1, "matmul_size": 256}
DRY_RUN_MODELS = ["unet"]
DRY_RUN_MODES = ["float32", "mixed"]
# Appended to the README's demo flags in the dry run (argparse keeps the last).
DRY_RUN_DEMO = [
    "--epochs",
    "1",
    "--steps-per-epoch",
    "1",
    "--val-steps",
    "1",
    "--filters",
    "4",
    "8",
    "--crop-size",
    "32",
    "--batch-size",
    "2",
    "--num-predictions",
    "1",
]
NOT_REACHED = "not reached: the run stopped before it"


def demo_argv(readme: str = README) -> list[str]:
    """The flags of the README's demo command, `python unet_train.py FLAGS`."""
    with open(readme, encoding="utf-8") as f:
        for line in f:
            if "python unet_train.py " in line:
                command = line.split("python unet_train.py ", 1)[1]
                return shlex.split(command.split("&&")[0])
    raise ValueError(f"{readme} has no `python unet_train.py` command")


def describe_device() -> dict:
    """The GPU, TensorFlow's view of the devices, and the versions in use.

    Only lists devices: a TensorFlow context here would take the GPU's memory
    from the fresh processes that measure.
    """
    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    device = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cuda_build": build.get("cuda_version"),
        "cudnn_build": build.get("cudnn_version"),
        "tf_devices": [found.name for found in tf.config.list_physical_devices()],
        "nvidia_smi": None,
        "name": device_name(),
    }
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device["name"] = details.get("device_name", "GPU")
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,driver_version"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        device["nvidia_smi"] = (smi.stdout or smi.stderr).strip()
        lines = smi.stdout.strip().splitlines()
        if smi.returncode == 0 and len(lines) > 1:  # Line 1 is the CSV header.
            device["name"] = lines[1]
    return device


def measure_mode(name: str, speed_args: argparse.Namespace, mode: str) -> dict:
    """`train_speed.measure` of one model in one mode (in a fresh process).

    The matmul rate is measured in the same process: the parent stays off the
    GPU, and the row is complete on its own.
    """
    rate = train_speed.matmul_rate(speed_args.matmul_size)
    row = train_speed.measure(
        name, speed_args, rate, mixed_precision=MODES[mode]["mixed_precision"]
    )
    row["policy"] = keras.mixed_precision.global_policy().name
    row["matmul_gflops"] = rate / 1e9
    return row


def speed_args_for(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    """`train_speed.py`'s arguments for the sizes of this run, in `mode`."""
    argv = [
        "--crop-size",
        str(args.crop_size),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--no-peer",
    ]
    if MODES[mode]["jit_compile"]:
        argv.append("--jit-compile")
    speed_args = train_speed.parse_args(argv)
    speed_args.matmul_size = args.matmul_size
    return speed_args


def run_demo(args: argparse.Namespace, work_dir: str) -> dict:
    """The README's demo in a fresh process: its wall time and its results.

    The wall time counts the process start and imports, like the command's;
    its outputs go to `work_dir`, and results.json and predictions.png are
    copied into the output folder.
    """
    argv = [*demo_argv(), "--output-dir", os.path.join(work_dir, "run")]
    if args.dry_run:  # A six-image `shapes` instead of generating 1,100.
        data_dir = shapes.generate_shapes(
            os.path.join(work_dir, "shapes"), num_train=4, num_val=2
        )
        argv += [*DRY_RUN_DEMO, "--data-dir", data_dir]
    demo = {"command": "python unet_train.py " + shlex.join(argv)}
    start = time.perf_counter()
    results = in_fresh_process(unet_train.main, argv)
    demo["wall_s"] = time.perf_counter() - start
    demo["mean_iou"] = results["mean_iou"]
    demo["pixel_accuracy"] = results["pixel_accuracy"]
    for name in ("results.json", "predictions.png"):
        path = os.path.join(work_dir, "run", name)
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(args.out_dir, f"demo_{name}"))
    return demo


def cell(row: dict, key: str, digits: int) -> str:
    """`row[key]` for the table, or blank where the row has no such number."""
    return f"{row[key]:.{digits}f}" if key in row else ""


def markdown(report: dict) -> str:
    """The report as a Markdown table of model x mode, the device in the heading."""
    device, settings, demo = report["device"], report["settings"], report["demo"]
    lines = [
        f"# GPU check: {device['name']}",
        "",
        f"TensorFlow {device['tensorflow']} (built for CUDA {device['cuda_build']}, "
        f"cuDNN {device['cudnn_build']}), Keras {device['keras']}, Python "
        f"{device['python']}. Crop {settings['crop_size']}, batch "
        f"{settings['batch_size']}, the median of {settings['steps']} timed "
        f"steps after one warm-up{', dry run' if settings['dry_run'] else ''}; "
        f"{report['elapsed_s']:.0f} s in all. Speed-up: float32's ms/step over "
        "the mode's.",
        "",
    ]
    if "wall_s" in demo:
        lines.append(
            f"Demo: {demo['wall_s']:.1f} s wall, mean IoU {demo['mean_iou']:.3f} "
            f"(`{demo['command']}`)"
        )
    else:
        lines.append(f"Demo: {demo.get('error') or demo.get('skipped')}")
    lines += [
        "",
        "| model | mode | policy | train ms/step | speed-up | train img/s "
        "| infer img/s | peak MB | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    float32_ms = {
        row["model"]: row["ms_step"]
        for row in report["rows"]
        if row["mode"] == "float32" and "ms_step" in row
    }
    for row in report["rows"]:
        speedup = ""
        if "ms_step" in row and row["model"] in float32_ms:
            speedup = f"{float32_ms[row['model']] / row['ms_step']:.2f}"
        lines.append(
            f"| {row['model']} | {row['mode']} | {row.get('policy', '')} "
            f"| {cell(row, 'ms_step', 1)} | {speedup} | {cell(row, 'train_ips', 1)} "
            f"| {cell(row, 'infer_ips', 1)} | {cell(row, 'peak_mb', 0)} "
            f"| {row.get('error') or row.get('skipped', '')} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(markdown(report))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"CPU, tiny sizes: {DRY_RUN_SIZES}, models {DRY_RUN_MODELS}, modes "
        f"{DRY_RUN_MODES}, a one-step demo",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        help=f"default: all ({DRY_RUN_MODELS} with --dry-run)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        help=f"default: all ({DRY_RUN_MODES} with --dry-run)",
    )
    for flag, size in GPU_SIZES.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            type=int,
            help=f"default: {size} ({DRY_RUN_SIZES[flag]} with --dry-run)",
        )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420,
        help="seconds for the demo and all measurements; what does not fit is "
        "skipped with a note (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
    for flag, size in sizes.items():
        if getattr(args, flag) is None:
            setattr(args, flag, size)
    args.models = args.models or (DRY_RUN_MODELS if args.dry_run else list(MODELS))
    args.modes = args.modes or (DRY_RUN_MODES if args.dry_run else list(MODES))
    return args


def main(argv=None) -> dict:
    start = time.perf_counter()
    args = parse_args(argv)
    device = describe_device()
    print(f"Device: {device['name']}")
    for key, value in device.items():
        print(f"  {key}: {value}")
    if not args.dry_run and not tf.config.list_physical_devices("GPU"):
        why = " (nvidia-smi sees one: is tensorflow[and-cuda] installed?)"
        raise SystemExit(
            f"gpu_check: TensorFlow sees no GPU{why if device['nvidia_smi'] else ''}; "
            "--dry-run runs the CPU path."
        )
    os.makedirs(args.out_dir, exist_ok=True)
    settings = {key: getattr(args, key) for key in (*GPU_SIZES, "budget_s")}
    report = {
        "device": device,
        "settings": {**settings, "dry_run": args.dry_run},
        "demo": {"skipped": NOT_REACHED},
        "rows": [
            {"model": name, "mode": mode, "skipped": NOT_REACHED}
            for mode in args.modes
            for name in args.models
        ],
        "elapsed_s": 0.0,
    }

    def budget_left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    spent = f"skipped: the {args.budget_s:.0f} s budget was spent"
    if budget_left() <= 0:
        report["demo"] = {"skipped": spent}
    else:
        print("\nDemo: the README's command", flush=True)
        with tempfile.TemporaryDirectory(prefix="gpu_check_demo_") as work_dir:
            try:
                report["demo"] = run_demo(args, work_dir)
            except Exception as error:  # One failure must not lose the rest.
                report["demo"] = {"error": f"{type(error).__name__}: {error}"}
    report["elapsed_s"] = time.perf_counter() - start
    write_report(report, args.out_dir)

    longest = 0.0  # The longest measurement so far: what the next one may take.
    for row in report["rows"]:
        name, mode = row["model"], row["mode"]
        if budget_left() <= longest:
            row["skipped"] = spent
            continue
        print(f"\n{name}, {mode}", flush=True)
        measure_start = time.perf_counter()
        try:
            measured = in_fresh_process(
                measure_mode, name, speed_args_for(args, mode), mode
            )
        except Exception as error:  # E.g. out of memory: the other rows still run.
            measured = {"error": f"{type(error).__name__}: {error}"}
        del row["skipped"]
        row.update(measured, seconds=time.perf_counter() - measure_start)
        longest = max(longest, row["seconds"])
        report["elapsed_s"] = time.perf_counter() - start
        write_report(report, args.out_dir)
    report["elapsed_s"] = time.perf_counter() - start
    write_report(report, args.out_dir)
    print("\n" + markdown(report))
    return report


if __name__ == "__main__":
    main()
