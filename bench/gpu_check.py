"""The GPU check: this project's models on one GPU with Keras on JAX, no TensorFlow.

    python bench/gpu_check.py OUT_DIR                    # both parts, ~9.5 min
    python bench/gpu_check.py OUT_DIR --parts speed      # one part
    python bench/gpu_check.py --dry-run OUT_DIR          # CPU, tiny sizes, ~2 min

Made for the GPU machine of docs/gpu.md (one H200, JAX, no TensorFlow, ten
minutes a command): run with KERAS_BACKEND=jax and a CamVid cache
(`python -m common.cli cache --dataset camvid --out data/camvid-cache`).

Two parts, each appending rows to OUT_DIR/gpu_check.json and rewriting
OUT_DIR/gpu_check.md after every row, so a command that is stopped keeps what
it measured and a later one (`--parts`) adds what is missing:

- camvid: each script's GPU recipe (`CAMVID_RECIPES`), trained by the
  script's own `main` from the cache at full resolution, all at once on the
  one GPU (each process takes a share of its memory), each stopped by
  `timeout` at `--budget-s`; its row is the run's results.json (validation
  split, 360x480: the cache holds the full-size masks), or its best epoch
  from history.csv if the run was stopped.
- speed: the training step of `SPEED_MODELS` alone on the GPU, in float32
  and mixed bfloat16 (each in a fresh process; JAX always compiles with
  XLA), and torchvision's DeepLab v3 (ResNet-50, MobileNetV3-Large) in
  bfloat16, channels-last, at the same batch and size: ms per step, images
  per second, and ours over theirs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import console  # noqa: F401, E402  (first: TensorFlow loads quietly)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import deeplab_train  # noqa: E402
import unet_train  # noqa: E402
from common.errors import InputError  # noqa: E402
from common.inference import load_model  # noqa: E402
from common.losses import segmentation_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = "data/camvid-cache"
# Each script's CamVid recipe for one GPU: full resolution (crops of 352 from
# 360x480 images scaled by 0.75-1.5), batch 16, bfloat16.
GPU_FLAGS = [
    "--dataset", "cache", "--crop-size", "352",
    "--scale-range", "0.75", "1.5", "--batch-size", "16", "--mixed-precision",
    "--optimizer", "adam", "--weight-decay", "0", "--num-predictions", "8",
]  # fmt: skip
CAMVID_RECIPES = {
    "unet": ["unet_train.py", "--filters", "32", "64", "128", "256",
             "--learning-rate", "2e-3", "--loss", "dice",
             "--epochs", "60", "--steps-per-epoch", "23"],
    "deeplabv3plus": ["deeplab_train.py", "--variant", "v3plus",
                      "--backbone", "mobilenetv2", "--backbone-weights", "none",
                      "--no-freeze-bn", "--learning-rate", "2e-3", "--loss", "dice",
                      "--epochs", "50", "--steps-per-epoch", "23"],
    "fcn8s": ["fcn_train.py", "--variant", "8s", "--width", "0.5",
              "--backbone-weights", "none", "--learning-rate", "5e-4",
              "--loss", "0.5*ce+lovasz", "--epochs", "40", "--steps-per-epoch", "23"],
    "segnet_basic": ["segnet_train.py", "--variant", "basic",
                     "--learning-rate", "2e-3", "--loss", "dice",
                     "--epochs", "50", "--steps-per-epoch", "23"],
}  # fmt: skip
# The dry run: the same path on CPU, one recipe, a shapes cache, tiny sizes.
DRY_RUN_FLAGS = ["--crop-size", "32", "--batch-size", "2", "--epochs", "1",
                 "--steps-per-epoch", "1", "--num-predictions", "2",
                 "--filters", "4", "8"]  # fmt: skip
# Speed: (name, batch, crop) for ours; torchvision's peers are named after them.
SPEED_MODELS = [("unet", 16, 256), ("deeplabv3_resnet50_os8", 16, 512),
                ("deeplabv3_mobilenetv2", 16, 512)]  # fmt: skip
PEERS = {
    "deeplabv3_resnet50_os8": "deeplabv3_resnet50",
    "deeplabv3_mobilenetv2": "deeplabv3_mobilenet_v3_large",
}
DRY_RUN_SPEED = [("unet", 1, 32)]
NUM_CLASSES = 21


# --------------------------------------------------------------------------
# Results: one JSON, one Markdown table, rewritten after every row
# --------------------------------------------------------------------------


def load_report(out_dir: str) -> dict:
    path = os.path.join(out_dir, "gpu_check.json")
    if os.path.isfile(path):
        with open(path) as report:
            return json.load(report)
    return {"device": device_name(), "camvid": [], "speed": []}


def save_report(out_dir: str, report: dict) -> None:
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", "## CamVid (val, 360x480)", ""]
    lines += [
        "| recipe | command | train s | wall s | mean IoU | global acc | class acc "
        "| lowest class |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["camvid"]:
        lowest = row.get("lowest_class", "")
        lines.append(
            f"| {row['recipe']} | `{row['command']}` | {row.get('train_s', '-')} | "
            f"{row.get('wall_s', '-')} | "
            f"{_fmt(row.get('mean_iou'))} | {_fmt(row.get('pixel_accuracy'))} | "
            f"{_fmt(row.get('class_average_accuracy'))} | {lowest} |"
        )
    lines += ["", "## Training step", ""]
    lines += [
        "| model | framework | precision | batch | crop | ms/step | images/s | "
        "ours / torchvision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["speed"]:
        lines.append(
            f"| {row['model']} | {row['framework']} | {row['precision']} | "
            f"{row['batch']} | {row['crop']} | {_fmt(row.get('ms_step'), 1)} | "
            f"{_fmt(row.get('images_s'), 0)} | {_fmt(row.get('ratio'), 2)} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def device_name() -> str:
    """The GPU as nvidia-smi names it, else the CPU."""
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return names.replace("\n", "; ")
    except (OSError, subprocess.CalledProcessError):
        return f"CPU x{os.cpu_count()}"


# --------------------------------------------------------------------------
# CamVid: every recipe at once, each in its own process
# --------------------------------------------------------------------------


def camvid_part(out_dir: str, args: argparse.Namespace, report: dict) -> None:
    recipes = dict(list(CAMVID_RECIPES.items())[:1] if args.dry_run else CAMVID_RECIPES)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / len(recipes):.2f}",
    }
    started = {}
    for name, (script, *flags) in recipes.items():
        run_dir = os.path.join(out_dir, "runs", name)
        argv = [script, *GPU_FLAGS, "--data-dir", args.cache, *flags]
        argv += [*(DRY_RUN_FLAGS if args.dry_run else []), "--output-dir", run_dir]
        log = open(os.path.join(out_dir, f"{name}.log"), "w")
        command = ["timeout", "-s", "INT", str(int(args.camvid_s)), sys.executable]
        started[name] = (
            subprocess.Popen(
                [*command, *argv], cwd=ROOT, env=env, stdout=log, stderr=log
            ),
            argv,
            time.time(),
        )
    while started:  # Each row as its run ends, with its own wall time.
        for name, (process, argv, start) in list(started.items()):
            if process.poll() is None:
                continue
            row = camvid_row(name, argv, os.path.join(out_dir, "runs", name))
            row.update(status=process.returncode, wall_s=round(time.time() - start))
            report["camvid"].append(row)
            save_report(out_dir, report)
            del started[name]
        time.sleep(1)


def camvid_row(name: str, argv: list[str], run_dir: str) -> dict:
    """results.json's scores, or the best epoch of history.csv for a stopped run."""
    row = {"recipe": name, "command": "python " + " ".join(argv)}
    results_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(results_path):
        with open(results_path) as f:
            run = json.load(f)
        ious = run["per_class_iou"]
        lowest = min(ious, key=lambda c: ious[c] if ious[c] is not None else 2)
        row.update(
            mean_iou=run["mean_iou"],
            pixel_accuracy=run["pixel_accuracy"],
            class_average_accuracy=run["class_average_accuracy"],
            per_class_iou=ious,
            lowest_class=f"{lowest} {ious[lowest]:.2f}",
            train_s=_train_seconds(run),
            epochs=run["epochs_this_run"],
        )
        return row
    history_path = os.path.join(run_dir, "history.csv")
    if os.path.isfile(history_path):
        with open(history_path) as f:
            epochs = list(csv.DictReader(f))
        best = max(epochs, key=lambda epoch: float(epoch["val_mean_iou"]))
        row.update(
            mean_iou=float(best["val_mean_iou"]),
            stopped_after_epochs=len(epochs),
            best_epoch=int(best["epoch"]) + 1,
        )
    return row


def _train_seconds(run: dict) -> int | None:
    steps, ms = run.get("optimizer_steps"), run.get("train_ms_per_step")
    return None if not (steps and ms) else round(steps * ms / 1000)


# --------------------------------------------------------------------------
# Speed: one model a process, alone on the GPU
# --------------------------------------------------------------------------


def speed_part(out_dir: str, args: argparse.Namespace, report: dict) -> None:
    deadline = time.time() + args.speed_s
    models = DRY_RUN_SPEED if args.dry_run else SPEED_MODELS
    for name, batch, crop in models:
        if args.speed_models and name not in args.speed_models:
            continue
        ours = {}
        for precision in args.precisions:
            if time.time() > deadline:
                return
            ours[precision] = measure_in_process(
                ["keras", name, precision, batch, crop], args, out_dir
            )
            report["speed"].append(ours[precision])
            save_report(out_dir, report)
        if name in PEERS and not args.dry_run and time.time() < deadline:
            theirs = measure_in_process(
                ["torch", PEERS[name], "bfloat16", batch, crop], args, out_dir
            )
            if ours.get("bfloat16", {}).get("images_s") and theirs.get("images_s"):
                ours["bfloat16"]["ratio"] = (
                    ours["bfloat16"]["images_s"] / theirs["images_s"]
                )
            report["speed"].append(theirs)
            save_report(out_dir, report)


def measure_in_process(spec: list, args: argparse.Namespace, out_dir: str) -> dict:
    framework, name, precision, batch, crop = spec
    row = dict(
        model=name, framework=framework, precision=precision, batch=batch, crop=crop
    )
    command = [sys.executable, os.path.abspath(__file__), "--measure", *map(str, spec)]
    if args.dry_run:
        command.append("--dry-run")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    with open(os.path.join(out_dir, "speed.log"), "a") as log:
        log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr[-3000:]}\n")
    if done.returncode != 0:
        return {**row, "error": done.stderr.strip().splitlines()[-1:]}
    return {**row, **json.loads(done.stdout.strip().splitlines()[-1])}


def measure(
    framework: str, name: str, precision: str, batch: int, crop: int, steps: int
):
    """Median seconds of one training step, printed as the last line (JSON)."""
    if framework == "torch":
        seconds = torch_step_seconds(name, batch, crop, steps)
    else:
        seconds = keras_step_seconds(name, precision, batch, crop, steps)
    print(json.dumps({"ms_step": 1000 * seconds, "images_s": batch / seconds}))


def keras_step_seconds(name, precision, batch, crop, steps) -> float:
    if precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    builders = {
        "unet": lambda: unet_train.build_unet(NUM_CLASSES),
        "deeplabv3_resnet50_os8": lambda: deeplab_train.build_deeplab(
            NUM_CLASSES, "v3", "resnet50", output_stride=8
        ),
        "deeplabv3_mobilenetv2": lambda: deeplab_train.build_deeplab(
            NUM_CLASSES, "v3", "mobilenetv2", output_stride=8
        ),
    }
    model = builders[name]()
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=segmentation_loss()
    )
    rng = np.random.default_rng(0)
    images = ops.convert_to_tensor(
        rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    )
    masks = ops.convert_to_tensor(
        rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype("int32")
    )
    return median_seconds(lambda: model.train_on_batch(images, masks), steps)


def torch_step_seconds(name, batch, crop, steps) -> float:
    import torch
    import torchvision

    model = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
    )
    model = model.cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    images = torch.rand(batch, 3, crop, crop, device="cuda") * 255
    images = images.to(memory_format=torch.channels_last)
    masks = torch.randint(0, NUM_CLASSES, (batch, crop, crop), device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(images)["out"].float(), masks)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()

    return median_seconds(step, steps)


def median_seconds(step, steps: int) -> float:
    """Median wall time of `steps` calls after two warm-ups (compilation)."""
    step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------


def export_models(out_dir: str, max_mib: float = 16) -> list[str]:
    """Each run's best model without optimizer state, as OUT_DIR/weights/RUN.keras.

    Only files of at most `max_mib` are kept (what the GPU machine can return).
    """
    weights_dir, runs_dir = (
        os.path.join(out_dir, "weights"),
        os.path.join(out_dir, "runs"),
    )
    os.makedirs(weights_dir, exist_ok=True)
    kept = []
    for name in sorted(os.listdir(runs_dir) if os.path.isdir(runs_dir) else []):
        best = os.path.join(out_dir, "runs", name, "best.keras")
        if not os.path.isfile(best):
            continue
        path = os.path.join(weights_dir, f"{name}.keras")
        try:
            load_model(best).save(path)  # Loaded uncompiled: no optimizer state.
        except InputError as error:  # E.g. a run stopped while writing it.
            print(error)
            continue
        if os.path.getsize(path) > max_mib * 2**20:
            os.remove(path)
        else:
            kept.append(path)
    return kept


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", help="folder for the results")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["camvid", "speed"],
        default=["camvid", "speed"],
        help="what to run, in this order (default: %(default)s)",
    )
    parser.add_argument(
        "--camvid-s",
        type=float,
        default=360,
        help="camvid: seconds after which every run is stopped (default: %(default)s)",
    )
    parser.add_argument(
        "--speed-s",
        type=float,
        default=100,
        help="speed: no measurement starts after this many seconds (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--speed-models",
        nargs="+",
        choices=[name for name, _, _ in SPEED_MODELS],
        help="speed: only these models (default: all)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32", "bfloat16"],
        help="speed: our models in these precisions (default: %(default)s)",
    )
    parser.add_argument("--cache", default=CACHE, help="the CamVid cache folder")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.measure:
        framework, name, precision, batch, crop = args.measure
        steps = 1 if args.dry_run else args.steps
        measure(framework, name, precision, int(batch), int(crop), steps)
        return None
    if not args.dry_run and device_name().startswith("CPU"):
        raise SystemExit(
            "gpu_check: nvidia-smi sees no GPU here; run it on the GPU machine "
            "(docs/gpu.md), or add --dry-run for the same path on CPU."
        )
    os.makedirs(args.out_dir, exist_ok=True)
    report = load_report(args.out_dir)
    parts = {"camvid": camvid_part, "speed": speed_part}
    for part in args.parts:
        parts[part](args.out_dir, args, report)
    if "camvid" in args.parts:
        print("Models to return:", *export_models(args.out_dir))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
