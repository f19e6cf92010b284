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
# # 02 · U-Net
#
# U-Net (Ronneberger, Fischer and Brox, MICCAI 2015,
# https://arxiv.org/abs/1505.04597) is an encoder-decoder: a contracting path that
# halves the resolution four times and doubles the channels, an expansive path that
# undoes each halving with a 2 x 2 "up-convolution", and at every level a **skip**
# that copies the encoder's feature map across and concatenates it with the
# decoder's ("copy and crop"), so that fine detail does not have to squeeze through
# the bottleneck. Where FCN adds class *scores* from finer layers, U-Net carries whole
# *feature maps*.
#
# Everything below imports `build_unet` and its geometry helpers from
# `unet_train.py`.

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

import matplotlib.pyplot as plt
from IPython.display import Image, display

import unet_train
from common import shapes, voc

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` (the tests) trains a tiny U-Net for a few steps, enough to run every
# cell. Without it, the U-Net of the script's demo command (16, 32, 64, 128 filters)
# trains for `EPOCHS` epochs on `shapes`, or on VOC if `data/VOCdevkit/VOC2012` exists.
#
# The runs write their checkpoints and plots under `OUTPUT_DIR`: a new temporary
# folder each time you run the notebook (its path is printed below). To keep them
# somewhere else, set the environment variable `NOTEBOOK_OUTPUT_DIR` to an empty
# folder before starting Jupyter (the tests point it at a folder of their own); a
# folder that already holds a run would resume that run.

# %%
QUICK = bool(os.environ.get("QUICK_RUN"))
EPOCHS = 1 if QUICK else 12
VOC_DIR = os.path.join("data", "VOCdevkit", "VOC2012")
DATASET = os.environ.get("NOTEBOOK_DATASET") or (
    "voc" if os.path.isdir(VOC_DIR) else "shapes"
)
DATA_DIR = VOC_DIR if DATASET == "voc" else shapes.generate_shapes()
CLASS_NAMES = voc.VOC_CLASSES if DATASET == "voc" else shapes.SHAPES_CLASSES
FILTERS = (4, 8, 16, 32) if QUICK else (16, 32, 64, 128)
CROP_SIZE = 64 if QUICK or DATASET == "shapes" else 128  # shapes: 64 x 64 images.
OUTPUT_DIR = os.environ.get("NOTEBOOK_OUTPUT_DIR") or tempfile.mkdtemp(
    prefix="02_unet-"
)
TRAINING_ARGS = [
    *("--dataset", DATASET, "--data-dir", DATA_DIR, "--output-dir", OUTPUT_DIR),
    *("--filters", *(str(f) for f in FILTERS)),
    *("--crop-size", str(CROP_SIZE), "--epochs", str(EPOCHS)),
]
if QUICK:
    TRAINING_ARGS += ["--batch-size", "4", "--steps-per-epoch", "3", "--val-steps", "1"]
    TRAINING_ARGS += ["--num-predictions", "3"]
print(f"{DATASET} in {DATA_DIR}; outputs in {OUTPUT_DIR}")

# %% [markdown]
# ## The U shape, with the paper's valid convolutions
#
# The paper's convolutions are unpadded (`padding="valid"`): each 3 x 3 convolution
# eats one pixel on every side, so each level loses 4 pixels to its two convolutions
# and the output (388 x 388) is smaller than the input (572 x 572). The encoder's map
# at a level is therefore *larger* than the decoder's map it meets, and has to be
# centre-cropped first: the "copy and crop" arrows of Fig. 1.
#
# The cell builds the paper's network (`--padding valid --no-batch-norm`, 64 to 1024
# channels) for a 572 x 572 input and reads every size from the model itself. What
# to look for: 572 -> 568 -> 284 ... 28 at the bottom; on the way up each
# up-convolution doubles the size (28 -> 56) and the encoder's map is cropped to it
# (64 -> 56, 136 -> 104, 280 -> 200, 568 -> 392), down to the 388 x 388 output.

# %%
paper = unet_train.build_unet(
    2, input_shape=(572, 572, 3), padding="valid", batch_norm=False
)


def size(layer_name):
    """Height x width x channels of a layer's output in the paper's U-Net."""
    _, height, width, channels = paper.get_layer(layer_name).output.shape
    return f"{height} x {width} x {channels}"


depth = len(unet_train.PAPER_FILTERS)
print(f"{'input':<28}{'572 x 572 x 3':>18}")
for level in range(1, depth + 1):
    print(f"{f'down{level}: 2 convs':<28}{size(f'down{level}_conv2_relu'):>18}")
    print(f"{f'down{level}: 2x2 max pool':<28}{size(f'down{level}_pool'):>18}")
print(f"{'bottleneck: 2 convs':<28}{size('bottleneck_conv2_relu'):>18}")
for level in range(depth, 0, -1):
    encoder = size(f"down{level}_conv2_relu")
    print(f"{f'up{level}: 2x2 up-convolution':<28}{size(f'up{level}_upconv'):>18}")
    print(
        f"{f'up{level}: copy and crop':<28}{size(f'up{level}_crop'):>18}"
        f"   (cropped from {encoder})"
    )
    print(f"{f'up{level}: concatenate':<28}{size(f'up{level}_concat'):>18}")
    print(f"{f'up{level}: 2 convs':<28}{size(f'up{level}_conv2_relu'):>18}")
print(f"{'logits (1x1 conv)':<28}{size('logits'):>18}")

print(
    f"\nvalid_output_size(572) = {unet_train.valid_output_size(572)}, "
    f"label_margin() = {unet_train.label_margin()} pixels per side"
)
print(f"parameters: {paper.count_params():,} (the paper's 2-class network)")

# %% [markdown]
# The same numbers drawn as the U. Each dot is the output of a level's two
# convolutions (its size and channels written beside it); the dashed arrows are the
# skips, labelled with the crop they need.

# %%
figure, axis = plt.subplots(figsize=(11, 5))
stages = [f"down{level}" for level in range(1, depth + 1)] + ["bottleneck"]
stages += [f"up{level}" for level in range(depth, 0, -1)]
heights = [1, 2, 3, 4, 5, 4, 3, 2, 1]
for x, (stage, height) in enumerate(zip(stages, heights)):
    _, side, _, channels = paper.get_layer(f"{stage}_conv2_relu").output.shape
    axis.plot(x, -height, "o", color="tab:blue", markersize=10)
    axis.annotate(
        f"{stage}\n{side}² x {channels}",
        (x, -height),
        textcoords="offset points",
        xytext=(0, 12),
        ha="center",
    )
axis.plot(range(len(stages)), [-h for h in heights], color="tab:blue", alpha=0.4)
for level in range(1, depth + 1):
    start, end = level - 1, len(stages) - level
    encoder_side = paper.get_layer(f"down{level}_conv2_relu").output.shape[1]
    crop_side = paper.get_layer(f"up{level}_crop").output.shape[1]
    axis.annotate(
        "",
        (end - 0.15, -level),
        (start + 0.15, -level),
        arrowprops=dict(arrowstyle="->", linestyle="--", color="gray"),
    )
    axis.text(
        (start + end) / 2,
        -level - 0.25,
        f"copy, crop {encoder_side} -> {crop_side}",
        ha="center",
        color="gray",
    )
axis.set_ylim(-5.6, -0.2)
axis.set_xlim(-0.7, len(stages) - 0.3)
axis.set_axis_off()
axis.set_title("U-Net with valid padding: 572 x 572 in, 388 x 388 out")
plt.show()

# %% [markdown]
# Valid padding has a price: the network cannot label the 92-pixel border of its
# input. The paper tiles large images and fills the missing context by mirroring
# the image (the overlap-tile strategy, Fig. 2), and so does this project
# (`--padding valid`: labels are centre-cropped by `label_margin()` in training, and
# evaluation mirrors each image outwards by 92 pixels). Only some input sizes work,
# because every pooling needs an even size:

# %%
for size_in in (570, 571, 572, 573, 574):
    print(size_in, "->", unet_train.valid_output_size(size_in))
valid_sizes = [n for n in range(400, 700) if unet_train.valid_output_size(n)]
print("valid inputs from 400 to 700:", valid_sizes, "(every 16th size)")

# %% [markdown]
# ## Same padding for VOC
#
# VOC images come in many sizes and this project scores every pixel, so the script's
# default is `--padding same`: zero-padded convolutions, output as large as the
# input, no cropping (the `CropToMatch` layers then crop nothing), and any input
# whose side is a multiple of 16 (four poolings). Batch norm after every convolution
# (not in the 2015 paper) makes it train quickly from scratch. The model trained
# below, level by level:

# %%
model = unet_train.build_unet(
    len(CLASS_NAMES), input_shape=(CROP_SIZE, CROP_SIZE, 3), filters=FILTERS
)
for layer in model.layers:
    if layer.name.endswith(("conv2_relu", "_crop", "pool")) or layer.name == "logits":
        print(f"{layer.name:<24}{str(layer.output.shape):>22}")
model.summary(line_length=100)

# %% [markdown]
# ## A short training
#
# `unet_train.main` is the function behind `python unet_train.py ...`: it builds the
# data pipeline of `00_voc_data`, this model, trains with the void-ignoring loss,
# keeps the checkpoint with the best validation mean IoU and scores it on every
# validation pixel. The per-class IoU table it prints after each epoch is the thing
# to watch: a network that predicts only background scores high pixel accuracy and
# 0% IoU on every object.

# %%
print("python unet_train.py", " ".join(TRAINING_ARGS))
results = unet_train.main(TRAINING_ARGS)
print(f"\nvalidation mean IoU {results['mean_iou']:.3f}")
for name, iou in results["per_class_iou"].items():
    print(f"  {name:<14}{'-' if iou is None else f'{iou:.1%}'}")

# %% [markdown]
# The script draws its predictions on the first validation images into
# `predictions.png` (image | ground truth | prediction, with a class legend).
# After the quick run expect noise or background; after a real one (`EPOCHS = 12` on
# `shapes`) the shapes come out with sharp corners, the skips at work.

# %%
display(Image(filename=os.path.join(OUTPUT_DIR, "predictions.png")))

# %% [markdown]
# The paper's own network: `python unet_train.py --padding valid --no-batch-norm`
# (572 x 572 tiles, overlap-tile evaluation). Next: `04_segnet`, which sends only the
# *positions* of the encoder's maxima across.
