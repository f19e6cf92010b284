"""The GPU check: this project's models on one GPU with Keras on JAX, no TensorFlow.

    python bench/gpu_check.py OUT_DIR --parts data camvid   # ~7.5 min
    python bench/gpu_check.py OUT_DIR --parts speed         # ~4 min, appends
    python bench/gpu_check.py --dry-run OUT_DIR             # CPU, tiny sizes, ~2 min

Made for the GPU machine of docs/gpu.md (one H200, JAX, no TensorFlow, ten
minutes a command): run with KERAS_BACKEND=jax and a CamVid cache
(`python -m common.cli cache --dataset camvid --out data/camvid-cache`).

Three parts, each appending rows to OUT_DIR/gpu_check.json and rewriting
OUT_DIR/gpu_check.md after every row, so a command that is stopped keeps what
it measured and a later one (`--parts`) adds what is missing:

- data: is the input the bottleneck? `fit`'s time a step for the U-Net
  recipe on the cache's batches (drawn and augmented on the device, as in
  training) against the same model on one batch repeated; #38 asks for at
  least 90% of the repeated batch's speed.
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
  per second, ours over theirs, and the share of the GPU's bfloat16 peak
  (a large matrix product, measured first) that our step's FLOPs (XLA's
  cost analysis of the forward and backward pass) reach.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import console  # noqa: F401, E402  (first: TensorFlow loads quietly)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import deeplab_train  # noqa: E402
import unet_train  # noqa: E402
from common import cache  # noqa: E402
from common.errors import InputError  # noqa: E402
from common.inference import load_model, save_with_float16_weights  # noqa: E402
from common.losses import make_loss, segmentation_loss  # noqa: E402
from common.metrics import ConfusionMatrix  # noqa: E402

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
# Data: the U-Net recipe's model, batch and crop, and the share of the
# repeated batch's speed that counts as "not the bottleneck" (#38).
DATA_CHECK = dict(filters=(32, 64, 128, 256), batch=16, crop=352, steps=50)
DRY_RUN_DATA = dict(filters=(4, 8), batch=2, crop=32, steps=2)
DATA_TARGET = 0.9
# The peak: a bfloat16 matrix product of this size, timed.
PEAK_SIZE, DRY_RUN_PEAK_SIZE = 8192, 256


# --------------------------------------------------------------------------
# Results: one JSON, one Markdown table, rewritten after every row
# --------------------------------------------------------------------------


def load_report(out_dir: str) -> dict:
    path = os.path.join(out_dir, "gpu_check.json")
    if os.path.isfile(path):
        with open(path) as report:
            return json.load(report)
    return {"device": device_name(), "camvid": [], "speed": []}


def rows(report: dict, part: str) -> list:
    """The report's rows of `part`, made on first use (older reports lack some)."""
    return report.setdefault(part, [])


def save_report(out_dir: str, report: dict) -> None:
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", "## Data: is it the bottleneck?"]
    lines += [
        "",
        "| model | batch | crop | ms/step, cache batches | ms/step, one batch "
        "repeated | speed ratio | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows(report, "data"):
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['crop']} | "
            f"{_fmt(row.get('real_ms_step'), 1)} | "
            f"{_fmt(row.get('repeated_ms_step'), 1)} | {_fmt(row.get('ratio'), 2)} | "
            f">= {DATA_TARGET} |"
        )
    lines += ["", "## CamVid (val, 360x480)", ""]
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
    peak = report.get("peak_tflops")
    if peak:
        lines += [f"Measured bfloat16 peak: {peak:.3g} TFLOP/s.", ""]
    lines += [
        "| model | framework | precision | batch | crop | ms/step | images/s | "
        "ours / torchvision | GFLOP/step | share of bf16 peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["speed"]:
        lines.append(
            f"| {row['model']} | {row['framework']} | {row['precision']} | "
            f"{row['batch']} | {row['crop']} | {_fmt(row.get('ms_step'), 1)} | "
            f"{_fmt(row.get('images_s'), 0)} | {_fmt(row.get('ratio'), 2)} | "
            f"{_fmt(row.get('gflop_step'), 1)} | {_fmt(row.get('peak_share'), 2)} |"
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
    if not report.get("peak_tflops"):
        peak = measure_in_process(["peak", "matmul", "bfloat16", 0, 0], args, out_dir)
        report["peak_tflops"] = peak.get("tflops")
        save_report(out_dir, report)
    models = DRY_RUN_SPEED if args.dry_run else SPEED_MODELS
    for name, batch, crop in models:
        if args.speed_models and name not in args.speed_models:
            continue
        ours = {}
        for precision in args.precisions:
            if time.time() > deadline:
                return
            ours[precision] = with_peak_share(
                measure_in_process(
                    ["keras", name, precision, batch, crop], args, out_dir
                ),
                report.get("peak_tflops"),
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


def with_peak_share(row: dict, peak_tflops: float | None) -> dict:
    """The row with the share of the bf16 peak its FLOPs per second reach."""
    if peak_tflops and row.get("gflop_step") and row.get("ms_step"):
        row["peak_share"] = row["gflop_step"] / row["ms_step"] / peak_tflops
    return row  # GFLOP per ms is TFLOP per second.


def data_part(out_dir: str, args: argparse.Namespace, report: dict) -> None:
    size = DRY_RUN_DATA if args.dry_run else DATA_CHECK
    row = measure_in_process(
        ["data", "unet", "bfloat16", size["batch"], size["crop"]], args, out_dir
    )
    row["model"] = f"U-Net {size['filters'][0]}-{size['filters'][-1]}"
    rows(report, "data").append(row)
    save_report(out_dir, report)


def measure_in_process(spec: list, args: argparse.Namespace, out_dir: str) -> dict:
    framework, name, precision, batch, crop = spec
    row = dict(
        model=name, framework=framework, precision=precision, batch=batch, crop=crop
    )
    command = [sys.executable, os.path.abspath(__file__), "--measure", *map(str, spec)]
    command += ["--cache", args.cache, "--steps", str(args.steps)]
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


def measure(args: argparse.Namespace) -> dict:
    """One measurement of `--measure FRAMEWORK NAME PRECISION BATCH CROP`."""
    framework, name, precision, batch, crop = args.measure
    batch, crop = int(batch), int(crop)
    steps = 1 if args.dry_run else args.steps
    if framework == "peak":
        return {"tflops": peak_tflops(DRY_RUN_PEAK_SIZE if args.dry_run else PEAK_SIZE)}
    if framework == "data":
        return data_speeds(args.cache, DRY_RUN_DATA if args.dry_run else DATA_CHECK)
    if framework == "torch":
        return per_step(torch_step_seconds(name, batch, crop, steps), batch)
    return keras_step(name, precision, batch, crop, steps)


def per_step(seconds: float, batch: int) -> dict:
    return {"ms_step": 1000 * seconds, "images_s": batch / seconds}


def peak_tflops(size: int, repeats: int = 20) -> float:
    """The GPU's bfloat16 throughput on a square matrix product of `size`."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.bfloat16)

    @jax.jit
    def products(a):  # Each product feeds the next: none can be skipped.
        return jax.lax.fori_loop(0, repeats, lambda _, x: (x @ a) * 1e-3, a)

    def run(count: int) -> None:
        for _ in range(count):
            result = products(a)
        result.block_until_ready()

    seconds = seconds_per_step(run, 5)
    return 2 * size**3 * repeats / seconds / 1e12


def keras_step(name, precision, batch, crop, steps) -> dict:
    """Our model's training step: its time, and its FLOPs from XLA's cost analysis."""
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
    loss = segmentation_loss()
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)
    rng = np.random.default_rng(0)
    images = ops.convert_to_tensor(
        rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    )
    masks = ops.convert_to_tensor(
        rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype("int32")
    )
    repeated = RepeatedBatch((images, masks), steps)
    seconds = seconds_per_step(functools.partial(fit_steps, model, repeated), steps)
    return {
        **per_step(seconds, batch),
        "gflop_step": step_gflop(model, loss, images, masks),
    }


def step_gflop(model, loss, images, masks) -> float | None:
    """GFLOPs of the forward and backward pass, by XLA's cost analysis.

    Of the lowered (not yet optimised) program: no second compilation, and
    fusion changes no FLOPs. The optimizer's update (a few per weight) is
    left out.
    """
    import jax

    def loss_of(trainable, non_trainable):
        logits, _ = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        return loss(masks, logits)

    lowered = jax.jit(jax.grad(loss_of)).lower(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / 1e9 if cost and "flops" in cost else None


class RepeatedBatch(keras.utils.PyDataset):
    """One batch, `steps` times: the speed a step would have if data were free."""

    def __init__(self, batch, steps: int):
        super().__init__()
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.batch


def data_speeds(cache_dir: str, size: dict) -> dict:
    """ms per step of `fit` on the cache's augmented batches and on one repeated.

    The U-Net recipe's model, loss and metric in bfloat16, each kind timed as
    the training step is (`seconds_per_step`).
    """
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    images, masks, _ = cache.read_split(cache_dir, "train")
    num_classes = cache.dataset_spec(cache_dir).num_classes
    model = unet_train.build_unet(num_classes, filters=size["filters"])
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=make_loss({"dice": 1.0}),
        metrics=[ConfusionMatrix(num_classes)],
    )
    steps = size["steps"]
    real = cache.TrainingBatches(
        images, masks, size["batch"], size["crop"], steps, (0.75, 1.5)
    )
    real_s, repeated_s = (
        seconds_per_step(functools.partial(fit_steps, model, batches), steps)
        for batches in (real, RepeatedBatch(real[0], steps))
    )
    return {
        "filters": list(size["filters"]),
        "real_ms_step": 1000 * real_s,
        "repeated_ms_step": 1000 * repeated_s,
        "ratio": repeated_s / real_s,
    }


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

    def run(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(images)["out"].float(), masks)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()

    return seconds_per_step(run, steps)


def fit_steps(model: keras.Model, batches: keras.utils.PyDataset, count: int) -> None:
    """`count` steps of `fit` on `batches`, finished when this returns."""
    model.fit(batches, epochs=1, steps_per_epoch=count, verbose=0)
    ops.convert_to_numpy(model.optimizer.iterations)  # Waits for the last step.


def seconds_per_step(run: Callable[[int], None], steps: int, rounds: int = 3) -> float:
    """Seconds a step when `run(steps)` takes them back to back, as training does.

    Synchronised once at the end of each run, not after every step (that
    would add each framework's per-call overhead, e.g. Keras' `train_on_batch`
    gathering its state, which `fit` does not pay). The fastest of `rounds`
    runs, after a warm-up of two steps (compilation; one if `steps` is 1).
    """
    run(min(2, steps))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(steps)
        times.append(time.perf_counter() - start)
    return min(times) / steps


# --------------------------------------------------------------------------


def export_models(out_dir: str, max_mib: float = 16) -> list[str]:
    """Each run's best model for weights/, as OUT_DIR/weights/RUN.keras.

    Without optimizer state and with float16 weights (U-Net 32-256: 14 MB
    instead of 31); only files of at most `max_mib` are kept (what the GPU
    machine can return).
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
            # Loaded uncompiled: no optimizer state.
            save_with_float16_weights(load_model(best), path)
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
        choices=["data", "camvid", "speed"],
        default=["data", "camvid", "speed"],
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
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per model and round"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.measure:  # The last line of stdout: one JSON object.
        print(json.dumps(measure(args)))
        return None
    if not args.dry_run and device_name().startswith("CPU"):
        raise SystemExit(
            "gpu_check: nvidia-smi sees no GPU here; run it on the GPU machine "
            "(docs/gpu.md), or add --dry-run for the same path on CPU."
        )
    os.makedirs(args.out_dir, exist_ok=True)
    report = load_report(args.out_dir)
    parts = {"data": data_part, "camvid": camvid_part, "speed": speed_part}
    for part in args.parts:
        parts[part](args.out_dir, args, report)
    if "camvid" in args.parts:
        print("Models to return:", *export_models(args.out_dir))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
