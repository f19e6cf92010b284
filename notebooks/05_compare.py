# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Four architectures, one dataset, one budget
#
# The previous notebooks each looked at one idea: FCN's skip connections
# (`01_fcn`), U-Net's copied feature maps (`02_unet`), DeepLab's atrous
# convolution (`03_deeplab`) and SegNet's pooling indices (`04_segnet`). Here the
# four train on the same data and are compared on what a practitioner asks: how
# big, how slow, how good, and good at what.
#
# With CamVid in `data/CamVid` (`bash data/camvid_download.sh`), they train on
# real street scenes with the CamVid recipes in `CAMVID_RECIPES`, 12-33 minutes
# each on two CPU cores (measured), and are scored on every pixel of the 101
# validation images at 360 x 480, as in the README's CamVid results table (the
# same recipes; every run, with the SegNet paper's rows beside them, in
# `docs/camvid.md`). Without it, they train on the built-in
# `shapes` with one shared budget of minutes: the same crop, batch, optimizer,
# number of steps and seed.
#
# A CPU budget compares how quickly each design learns from scratch, not what it
# can reach: with ImageNet backbones and a GPU's training the order changes (each
# script's docstring has its VOC recipe).

# %% [markdown]
# The first cell makes the repository root the working directory (Jupyter starts in
# `notebooks/`), so that the scripts and `common` import.

# %%
import os
import sys

ROOT = os.getcwd()
while not os.path.isfile(os.path.join(ROOT, "common", "voc.py")):
    if os.path.dirname(ROOT) == ROOT:
        raise FileNotFoundError("Start Jupyter inside the repository.")
    ROOT = os.path.dirname(ROOT)
os.chdir(ROOT)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tempfile

import keras
import matplotlib.pyplot as plt
import numpy as np

import deeplab_train
import evaluate
import fcn_train
import segnet_train
import unet_train
from bench.train_speed import forward_flops
from common import shapes, voc
from common.inference import load_model, predict_multiscale, to_numpy_labels
from common.plots import compare_predictions

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` (the tests) trains tiny versions for two steps each, enough to run
# every cell. Without it, the dataset is CamVid if `data/CamVid` exists (about an hour
# and a half for the four), else VOC if `data/VOCdevkit/VOC2012` exists (use a GPU for
# that, and the scripts' full-size defaults), else `shapes` (minutes per model).
# `NOTEBOOK_DATASET` and `NOTEBOOK_DATA_DIR` choose another.
#
# `MODELS` holds each script's `main` and the flags that make its model: CPU-sized
# versions of the four (FCN at a fraction of VGG-16's width, U-Net with 16-128
# filters, SegNet-Basic, DeepLab v3+ on MobileNetV2), none pretrained.
# `SHARED_ARGS` is what they share; on CamVid, `CAMVID_RECIPES` adds each one's
# schedule, sized to fit 30 minutes on two CPU cores.
#
# The runs write their checkpoints and plots under `OUTPUT_DIR`: a new temporary
# folder each time you run the notebook (its path is printed below). To keep them
# somewhere else, set the environment variable `NOTEBOOK_OUTPUT_DIR` to an empty
# folder before starting Jupyter (the tests point it at a folder of their own); a
# folder that already holds a run would resume that run.

# %%
QUICK = bool(os.environ.get("QUICK_RUN"))
UNET_FILTERS = (4, 8, 16, 32) if QUICK else (16, 32, 64, 128)
EPOCHS = 1 if QUICK else 12
FOLDERS = {"camvid": voc.CAMVID_DIR, "voc": voc.VOC_DIR}  # In this order.
DOWNLOADED = [name for name, folder in FOLDERS.items() if os.path.isdir(folder)]
DATASET = os.environ.get("NOTEBOOK_DATASET") or (DOWNLOADED + ["shapes"])[0]
DATA_DIR = os.environ.get("NOTEBOOK_DATA_DIR") or FOLDERS.get(DATASET)
DATA_DIR = DATA_DIR or shapes.generate_shapes()
CLASS_NAMES, VOID = {
    "camvid": (voc.CAMVID_CLASSES, voc.CAMVID_VOID),
    "voc": (voc.VOC_CLASSES, voc.IGNORE_LABEL),
}.get(DATASET, (shapes.SHAPES_CLASSES, voc.IGNORE_LABEL))
# CamVid trains at half its 360 x 480 (`--image-scale`); scores are at full size.
IMAGE_SCALE = 0.5 if DATASET == "camvid" else 1.0
FCN_WIDTH = "0.0625" if QUICK else "0.25" if DATASET == "camvid" else "0.125"
CROP_SIZE = 64 if QUICK or DATASET == "shapes" else 128  # shapes: 64 x 64 images.
BATCH_SIZE = 4 if QUICK else 8
OUTPUT_DIR = os.environ.get("NOTEBOOK_OUTPUT_DIR") or tempfile.mkdtemp(
    prefix="05_compare-"
)
SHARED_ARGS = [
    *("--dataset", DATASET, "--data-dir", DATA_DIR, "--seed", "0"),
    *("--batch-size", str(BATCH_SIZE), "--optimizer", "adam", "--weight-decay", "0"),
    *("--image-scale", str(IMAGE_SCALE), "--num-predictions", "0"),  # We draw ours.
]
# Each model's CamVid schedule, on top of SHARED_ARGS and MODELS.
CAMVID_RECIPES = {
    "FCN-8s": ["--crop-size", "192", "--learning-rate", "5e-4", "--epochs", "10",
               "--steps-per-epoch", "90", "--lr-schedule", "poly",
               "--loss", "0.5*ce+lovasz"],
    "U-Net": ["--crop-size", "192", "--learning-rate", "2e-3", "--epochs", "18",
              "--steps-per-epoch", "46", "--loss", "dice"],
    "SegNet-Basic": ["--crop-size", "176", "--learning-rate", "2e-3", "--epochs", "6",
                     "--steps-per-epoch", "36", "--loss", "dice"],
    "DeepLab v3+": ["--crop-size", "192", "--learning-rate", "2e-3", "--epochs", "10",
                    "--steps-per-epoch", "72", "--loss", "dice"],
}  # fmt: skip
if DATASET == "camvid":
    SHARED_ARGS += ["--scale-range", "0.75", "1.5"]
if DATASET != "camvid" or QUICK:
    CAMVID_RECIPES = dict.fromkeys(CAMVID_RECIPES, [])  # One shared budget instead.
    SHARED_ARGS += ["--crop-size", str(CROP_SIZE), "--learning-rate", "1e-3"]
    SHARED_ARGS += ["--epochs", str(EPOCHS)]
if QUICK:
    SHARED_ARGS += ["--steps-per-epoch", "2", "--val-steps", "1"]
MODELS = {
    "FCN-8s": (
        fcn_train.main,
        ["--variant", "8s", "--width", FCN_WIDTH],
    ),
    "U-Net": (
        unet_train.main,
        ["--filters", *(str(filters) for filters in UNET_FILTERS)],
    ),
    "SegNet-Basic": (segnet_train.main, ["--variant", "basic"]),
    "DeepLab v3+": (
        deeplab_train.main,
        [
            *("--variant", "v3plus", "--backbone", "mobilenetv2", "--no-freeze-bn"),
            *("--head-filters", "32" if QUICK else "128"),
        ],
    ),
}
NOT_PRETRAINED = ["--backbone-weights", "none"]  # FCN, SegNet and DeepLab.
print(f"{DATASET} in {DATA_DIR}; outputs in {OUTPUT_DIR}")

# %% [markdown]
# ## Training
#
# Each script's `main` is what `python SCRIPT.py ...` runs; the cell prints the
# equivalent command before each run. Each run keeps its best checkpoint (by
# validation mean IoU) in its own folder. `evaluate.main` (`python evaluate.py`)
# then scores it on every pixel of every validation image at its full size: a run
# trained with `--image-scale` predicts at that scale and its softmax is upsampled
# to the full-size labels, so the scores compare with the papers'.

# %%
results, scores = {}, {}
for name, (main, model_args) in MODELS.items():
    argv = [*SHARED_ARGS, *model_args, *CAMVID_RECIPES[name]]
    if main is not unet_train.main:
        argv += NOT_PRETRAINED
    run_dir = os.path.join(OUTPUT_DIR, name)
    argv += ["--output-dir", run_dir]
    print(f"\n===== {name}: python {main.__module__}.py {' '.join(argv)}")
    results[name] = main(argv)
    best = os.path.join(run_dir, "best.keras")
    scores[name] = evaluate.main(["--model", best, "--worst", "0"])
    keras.backend.clear_session()

# %% [markdown]
# ## Size, cost and speed
#
# For each best checkpoint: parameters, forward FLOPs per `CROP_SIZE` image
# (counted by TensorFlow's profiler, the same function `bench/train_speed.py`
# uses), the median wall time of a training step during the run above
# (`train_ms_per_step` in each run's `results.json`, input pipeline included), and
# the validation mean IoU. What to look for: parameters, FLOPs and time rank the
# models differently. SegNet-Basic has few weights, but its 7 x 7 kernels run at
# full resolution, so it costs the most FLOPs; DeepLab's MobileNetV2 has few
# FLOPs spread over many small layers, so its steps take longer than its FLOPs
# suggest.

# %%
models, costs = {}, {}
for name in MODELS:
    model = load_model(os.path.join(OUTPUT_DIR, name, "best.keras"))
    costs[name] = {
        "parameters": model.count_params(),
        "gflops": forward_flops(model, CROP_SIZE) / 1e9,
        "ms_per_step": results[name]["train_ms_per_step"],
    }
    models[name] = model

print(
    f"{'model':<14}{'parameters':>12}{'GFLOP/img':>11}{'ms/step':>9}"
    f"{'mean IoU':>10}{'pixel acc':>11}"
)
for name, cost in costs.items():
    print(
        f"{name:<14}{cost['parameters']:>12,}{cost['gflops']:>11.2f}"
        f"{cost['ms_per_step']:>9.0f}{scores[name]['mean_iou']:>10.3f}"
        f"{scores[name]['pixel_accuracy']:>11.3f}"
    )

# %% [markdown]
# The same as a picture: mean IoU against training time per step, the size of each
# dot proportional to the parameters. Up and to the left is better.

# %%
figure, axis = plt.subplots(figsize=(7, 4.5))
largest = max(cost["parameters"] for cost in costs.values())
for name, cost in costs.items():
    axis.scatter(
        cost["ms_per_step"],
        scores[name]["mean_iou"],
        s=80 + 1200 * cost["parameters"] / largest,
        alpha=0.6,
        label=f"{name} ({cost['parameters'] / 1e6:.2f} M parameters)",
    )
axis.set(
    xlabel=f"ms per training step (batch {BATCH_SIZE}, this machine)",
    ylabel="validation mean IoU",
    title=f"Four architectures on {DATASET}",
)
axis.grid(alpha=0.3)
axis.legend(loc="best", fontsize="small")
plt.show()

# %% [markdown]
# ## Per-class IoU
#
# Mean IoU hides which classes a model gets. One group of bars per class; a missing
# bar is a class that model never predicted correctly (IoU 0), a class absent from
# both the labels and the predictions has no IoU and is left out. What to look for:
# the classes with thin parts (on `shapes`, star and cross; on CamVid, pole, sign,
# fence, pedestrian and bicyclist) are where upsampling
# coarse maps (FCN, DeepLab) and carrying fine detail across (U-Net's skips,
# SegNet's indices) can differ.

# %%
present = [
    index
    for index, class_name in enumerate(CLASS_NAMES)
    if any(scores[name]["per_class_iou"][class_name] is not None for name in MODELS)
]
width = 0.8 / len(MODELS)
figure, axis = plt.subplots(figsize=(max(7, 1.1 * len(present)), 4))
for offset, name in enumerate(MODELS):
    ious = [scores[name]["per_class_iou"][CLASS_NAMES[i]] or 0 for i in present]
    axis.bar(np.arange(len(present)) + offset * width, ious, width, label=name)
axis.set_xticks(np.arange(len(present)) + 0.4 - width / 2)
axis.set_xticklabels([CLASS_NAMES[i] for i in present], rotation=30, ha="right")
axis.set(ylabel="IoU", ylim=(0, 1), title="Validation IoU per class")
axis.grid(alpha=0.3, axis="y")
axis.legend(fontsize="small")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## The same images through all four
#
# The first validation images at their original size, each model's prediction
# beside the ground truth. `predict_multiscale` resizes an image by
# `IMAGE_SCALE` (the scale the models trained at), pads it to a multiple of 32
# with the dataset mean, runs the model, crops the padding off the output and
# resizes the softmax back to the full image: what `predict.py` does for your
# own images.

# %%
pairs = voc.list_pairs(DATA_DIR, "val")[: 2 if QUICK else 4]
examples = [
    voc.load_pair(image_path, mask_path, len(CLASS_NAMES), VOID)
    for image_path, mask_path in pairs
]
predictions = {
    name: [
        to_numpy_labels(predict_multiscale(model, image, (IMAGE_SCALE,)))
        for image, _ in examples
    ]
    for name, model in models.items()
}
compare_predictions(
    [image.numpy() for image, _ in examples],
    [mask.numpy() for _, mask in examples],
    predictions,
    CLASS_NAMES,
    title=f"{DATASET} validation images, each model's prediction",
)
plt.show()

# %% [markdown]
# To compare at full size and on VOC, run the scripts with their defaults (the
# commands are in the README) and `python evaluate.py --model RUN/best.keras`
# on each; `bench/train_speed.py` times the full-size models side by side.
