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
# # 03 · DeepLab: atrous convolution, output stride and ASPP
#
# FCN and U-Net shrink the image 32 or 16 times and then work hard to get the
# detail back. DeepLab (Chen, Papandreou, Kokkinos, Murphy, Yuille and others,
# 2014-2018) shrinks it less: the last poolings keep stride 1 and the layers after
# them *dilate* their kernels instead ("atrous" convolution, from the French *à
# trous*, with holes), so they see as much of the image as before on a finer map.
# Four papers, each adding one idea:
#
# - **v1** (ICLR 2015, https://arxiv.org/abs/1412.7062): atrous VGG-16 at output
#   stride 8; fc6 as a 3 x 3 convolution with dilation 12 ("LargeFOV").
# - **v2** (TPAMI 2017, https://arxiv.org/abs/1606.00915): ResNet, and ASPP-L: four
#   classifiers at rates 6, 12, 18 and 24 whose logits are summed.
# - **v3** (arXiv 2017, https://arxiv.org/abs/1706.05587): ASPP with batch norm and
#   an image-pooling branch, concatenated and projected; multi-grid rates.
# - **v3+** (ECCV 2018, https://arxiv.org/abs/1802.02611): a small decoder that
#   mixes in stride-4 features; depthwise-separable convolutions (Xception-65).
#
# Everything below imports `build_deeplab` and its pieces from `deeplab_train.py`.

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
from IPython.display import Image, display
from keras import layers

import deeplab_train
from common import shapes, voc

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` (the tests) trains a narrow DeepLab v3+ for a few steps, enough to
# run every cell. Without it, DeepLab v3+ on MobileNetV2 trains for `EPOCHS` epochs
# on `shapes`, or on VOC if `data/VOCdevkit/VOC2012` exists.
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
CROP_SIZE = 64 if QUICK or DATASET == "shapes" else 128  # shapes: 64 x 64 images.
OUTPUT_DIR = os.environ.get("NOTEBOOK_OUTPUT_DIR") or tempfile.mkdtemp(
    prefix="03_deeplab-"
)
TRAINING_ARGS = [
    *("--dataset", DATASET, "--data-dir", DATA_DIR, "--output-dir", OUTPUT_DIR),
    *("--variant", "v3plus", "--backbone", "mobilenetv2"),
    # No download: trained from scratch, so BN must learn (--no-freeze-bn).
    *("--backbone-weights", "none", "--no-freeze-bn"),
    *("--crop-size", str(CROP_SIZE), "--epochs", str(EPOCHS)),
    *("--batch-size", "4" if QUICK else "12"),
    *("--optimizer", "adam", "--learning-rate", "1e-3"),
]
if QUICK:
    TRAINING_ARGS += ["--head-filters", "32", "--steps-per-epoch", "3"]
    TRAINING_ARGS += ["--val-steps", "1", "--num-predictions", "3"]
print(f"{DATASET} in {DATA_DIR}; outputs in {OUTPUT_DIR}")

# %% [markdown]
# ## Atrous convolution: the same 9 weights, spread out
#
# A 3 x 3 convolution with dilation rate `r` multiplies the input at offsets
# `-r, 0, +r` in each direction: still 9 weights, but spread over a
# `(2r + 1) x (2r + 1)` window. The cell feeds a single bright pixel (an impulse)
# through Keras `Conv2D` layers with all-ones kernels and shows where it lands in
# the output: the **impulse response**, which is the (mirrored) set of input
# pixels one output pixel reads.
#
# What to look for: on the top row, the 9 taps move apart with the rate and leave
# holes; on the bottom row, a stack of three layers with rates 1, 2, 4 covers a
# 15 x 15 window with no holes, where three ordinary 3 x 3 layers cover 7 x 7. That
# is why DeepLab's stages dilate by a growing rate (and v3's multi-grid 1, 2, 4).

# %%
SIZE = 21
impulse = np.zeros((1, SIZE, SIZE, 1), "float32")
impulse[0, SIZE // 2, SIZE // 2, 0] = 1


def atrous(rate):
    """A 3 x 3 convolution with dilation `rate` and all nine weights equal to 1."""
    return layers.Conv2D(
        1,
        3,
        padding="same",
        dilation_rate=rate,
        use_bias=False,
        kernel_initializer="ones",
    )


def impulse_response(rates):
    """The impulse after a stack of atrous convolutions, one per rate."""
    x = impulse
    for rate in rates:
        x = atrous(rate)(x)
    return x.numpy()[0, :, :, 0]


stacks = [(1,), (2,), (4,), (1, 1, 1), (1, 2, 4)]
figure, axes = plt.subplots(1, len(stacks), figsize=(3.2 * len(stacks), 3.6))
for axis, rates in zip(axes, stacks):
    response = impulse_response(rates)
    reach = np.argwhere(response > 0)
    side = reach[:, 0].max() - reach[:, 0].min() + 1
    axis.imshow(response > 0, cmap="Blues", vmin=0, vmax=1.3)
    axis.set_title(
        f"rates {', '.join(map(str, rates))}\n"
        f"{int((response > 0).sum())} pixels in a {side} x {side} window"
    )
    axis.set_xticks([])
    axis.set_yticks([])
figure.suptitle("Which input pixels one output pixel reads (3 x 3 kernels)")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## Output stride: strides become dilation
#
# The *output stride* is input size / feature-map size at the head. ResNet-50 has
# five stride-2 steps (output stride 32). DeepLab keeps the first ones and, once the
# output stride is reached, sets the remaining strides to 1 and multiplies the
# dilation of every later layer by the stride it removed (v3, Sec. 3.1, Fig. 3):
# the receptive field grows as in the original network while the map stays at
# 1/16 or 1/8. `deeplab_train.OutputStride` does this bookkeeping for every
# backbone. Each cell below is the stride the step keeps and the dilation rate of
# the layers after it. What to look for: at output stride 16, conv5 keeps stride 1
# and dilates by 2; at 8, conv4 dilates by 2 and conv5 by 4.

# %%
RESNET_STEPS = ("conv1", "pool1", "conv3", "conv4", "conv5")
print(f"{'output stride':<15}" + "".join(f"{step:>16}" for step in RESNET_STEPS))
for output_stride in (32, 16, 8):
    schedule = deeplab_train.OutputStride(output_stride)
    cells = []
    for _ in RESNET_STEPS:
        stride, _ = schedule.strided(2)
        cells.append(f"stride {stride}, rate {schedule.rate}")
    print(f"{output_stride:<15}" + "".join(f"{cell:>16}" for cell in cells))

# %% [markdown]
# (The step whose stride was removed still uses the rate before it, as DeepLab's
# own code does; `strided` returns that rate.) The same backbone at two output
# strides, read from the real model: the "features" layer the head reads is
# 32 x 32 or 64 x 64 for a 512 x 512 image, with the same number of weights.
# Output stride 8 computes conv4 and conv5, most of ResNet-50's work, at four times
# as many positions: the papers train at 16 and evaluate at 8.

# %%
for output_stride in (16, 8):
    model = deeplab_train.build_deeplab(
        21, "v3", "resnet50", output_stride, input_shape=(512, 512, 3)
    )
    features = model.get_layer("features").output.shape
    print(
        f"output stride {output_stride:>2}: features {features[1]} x {features[2]} x "
        f"{features[3]}, {model.count_params():,} parameters"
    )
keras.backend.clear_session()

# %% [markdown]
# ## ASPP: several rates at once, and why image pooling
#
# Objects come at many sizes, so DeepLab v2 reads the same features with several
# rates in parallel: atrous spatial pyramid pooling. The rates are tied to the
# output stride: (6, 12, 18) at 16, doubled to (12, 24, 36) at 8, so that each
# branch covers the same part of the *image* (`aspp_rates`, v3 Sec. 4.1).

# %%
for variant, output_stride in (("v2", 8), ("v3", 16), ("v3", 8)):
    rates = deeplab_train.aspp_rates(variant, output_stride)
    reach = [(2 * rate + 1) * output_stride for rate in rates]
    print(
        f"{variant} at output stride {output_stride:>2}: rates {rates}; each "
        f"3 x 3 branch spans {', '.join(map(str, reach))} input pixels"
    )

# %% [markdown]
# Large rates have a catch (v3, Sec. 3.3, Fig. 4): near the border many of the 9
# taps fall on zero padding, and when the rate approaches the map's size only the
# centre tap is left: the 3 x 3 filter degenerates into a 1 x 1. The cell counts,
# for a 33 x 33 feature map (a 513 x 513 image at output stride 16), the average
# share of a 3 x 3 filter's taps that land inside the map. What to look for: under
# half at rate 18, and 1/9 (the centre tap alone) from rate 33 on. v3 adds an
# **image pooling** branch (global average, 1 x 1 conv, broadcast back) to supply
# the global context that large rates no longer can.

# %%
MAP = 33


def valid_tap_share(rate, size=MAP):
    """Average share of a 3 x 3 atrous kernel's taps inside a size x size map."""
    positions = np.arange(size)
    inside = sum(
        ((positions + offset * rate >= 0) & (positions + offset * rate < size)).mean()
        for offset in (-1, 0, 1)
    )
    return (inside / 3) ** 2  # Rows and columns are independent.


rates = np.arange(1, 40)
shares = [valid_tap_share(rate) for rate in rates]
figure, axis = plt.subplots(figsize=(7, 3.6))
axis.plot(rates, shares, marker="o", markersize=3)
for rate in deeplab_train.aspp_rates("v3", 16):
    axis.annotate(
        f"rate {rate}: {valid_tap_share(rate):.0%}",
        (rate, valid_tap_share(rate)),
        textcoords="offset points",
        xytext=(8, 8),
    )
axis.axhline(1 / 9, color="gray", linestyle="--", label="only the centre tap (1/9)")
axis.set(
    xlabel="atrous rate",
    ylabel="share of the 9 taps inside the map",
    title=f"3 x 3 atrous filter on a {MAP} x {MAP} feature map (v3, Fig. 4)",
    ylim=(0, 1.05),
)
axis.legend()
axis.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## v1 -> v2 -> v3 -> v3+, built
#
# Each variant at its paper's defaults, read from the real models: the backbone,
# output stride, head and parameters, and whether the layers each paper added are
# there. ASPP-L (v2) ends in summed logits; v3's ASPP concatenates five 256-channel
# branches (image pooling, 1 x 1, three atrous) and projects them; v3+ adds the
# decoder, which upsamples by 4 and mixes in 48 channels of stride-4 features.

# %%
VARIANTS = [
    ("v1", "vgg16"),
    ("v2", "resnet50"),
    ("v3", "resnet50"),
    ("v3plus", "resnet50"),
    ("v3plus", "xception"),
]
# The layer that shows each paper's idea is in the model (by its layer name).
IDEAS = {
    "fc6 r12": "fc6",
    "ASPP-L": "aspp_l1",
    "ASPP": "aspp_concat",
    "pooling": "image_pooling_gap",
    "decoder": "decoder_concat",
}
print(
    f"{'variant':<9}{'backbone':<13}{'OS':>4}{'parameters':>14}"
    + "".join(f"{idea:>9}" for idea in IDEAS)
)
for variant, backbone in VARIANTS:
    model = deeplab_train.build_deeplab(21, variant, backbone)
    names = {layer.name for layer in model.layers}
    output_stride = deeplab_train.DEFAULT_OUTPUT_STRIDE[variant]
    print(
        f"{variant:<9}{backbone:<13}{output_stride:>4}{model.count_params():>14,}"
        + "".join(f"{'yes' if name in names else '-':>9}" for name in IDEAS.values())
    )
    keras.backend.clear_session()

# %% [markdown]
# v1 and v2's conditional random field (a post-processing step that sharpens
# boundaries) is not part of the network: it has its own section at the end. The
# v3+ encoder-decoder, drawn from the model: the ASPP output (1/16) meets the
# stride-4 features.

# %%
model = deeplab_train.build_deeplab(
    len(CLASS_NAMES), "v3plus", "resnet50", input_shape=(512, 512, 3)
)
for name in (
    "features",
    "image_pooling_resize",
    "aspp_concat",
    "concat_projection_relu",
    "decoder_upsample",
    "feature_projection0_relu",
    "decoder_concat",
    "decoder_conv1_relu",
    "logits",
    "upsample_logits",
):
    print(f"{name:<28}{str(model.get_layer(name).output.shape):>24}")
keras.backend.clear_session()

# %% [markdown]
# ## A short training of v3+
#
# `deeplab_train.main` is the function behind `python deeplab_train.py ...`. Here
# it trains v3+ on MobileNetV2 from scratch (no ImageNet download); on VOC use the
# default `--backbone-weights imagenet`, which matters far more for DeepLab than
# for U-Net. Batch norm: the papers train it with 16 images per step and freeze it
# below that (`--freeze-bn` is the default under 12 images); on several GPUs
# `--sync-bn` (on by default for DeepLab) pools every replica's images into one
# statistic. Watch the per-class IoU table after each epoch.

# %%
print("python deeplab_train.py", " ".join(TRAINING_ARGS))
results = deeplab_train.main(TRAINING_ARGS)
print(f"\nvalidation mean IoU {results['mean_iou']:.3f}")
for name, iou in results["per_class_iou"].items():
    print(f"  {name:<14}{'-' if iou is None else f'{iou:.1%}'}")

# %% [markdown]
# Predictions on the first validation images (image | ground truth | prediction).
# After the quick run expect noise or background. After a real one, look at the
# corners and thin parts: the v3+ decoder works at stride 4 and its logits are
# then upsampled bilinearly by 4, so detail finer than about 4 pixels has to
# survive that interpolation (v2 added a CRF for exactly this).

# %%
display(Image(filename=os.path.join(OUTPUT_DIR, "predictions.png")))

# %% [markdown]
# ## v1/v2's dense CRF: snapping a blurry map to the image's edges
#
# DeepLab v1 and v2 upsample their stride-8 logits bilinearly, so boundaries come
# out blurred over about 8 pixels. They then run the fully connected CRF of
# Krähenbühl & Koltun (2011): every pixel pair pays a cost for different labels,
# large when the two are close *and* of similar colour (the appearance kernel) or
# merely close (the smoothness kernel). `common.crf.dense_crf` runs Krähenbühl's
# C++ mean-field code (`pip install -r requirements-crf.txt`) with DeepLab's VOC
# settings; `evaluate.py --crf` and `predict.py --crf` use it.
#
# No trained VOC network is at hand here, so the cell makes one's kind of output
# from the ground truth: boundaries misplaced by a few pixels (a smooth random
# displacement), one-hot averaged over 8 x 8 cells, noisy logits, bilinearly
# upsampled (`crf.simulated_stride8_probabilities`). It uses the VOC sample pairs
# beside the checkout if present, else `shapes` validation images. What to look
# for: the unaries' rounded outlines that cut across or spill over the object's
# edge, and how the CRF output pulls them back onto the image's edges (and where
# it cannot: thin parts the unaries already lost). Each 500 x 375 image takes
# about a second on a CPU.

# %%
from common import crf
from common.metrics import ConfusionMatrix, mean_iou, trimap_mask

SAMPLE_DIR = os.path.join("..", "shared", "data", "voc_sample", "VOC2012")
CRF_DIR, CRF_CLASSES = (
    (SAMPLE_DIR, voc.VOC_CLASSES)
    if os.path.isdir(SAMPLE_DIR)
    else (shapes.generate_shapes(), shapes.SHAPES_CLASSES)
)
crf_pairs = voc.list_pairs(CRF_DIR, "val", "voc")[: 1 if QUICK else 6]
rng = np.random.default_rng(0)
examples = []
for image_path, mask_path in crf_pairs:
    image, mask = (
        t.numpy() for t in voc.load_pair(image_path, mask_path, len(CRF_CLASSES))
    )
    unaries = crf.simulated_stride8_probabilities(mask, len(CRF_CLASSES), rng)
    examples.append((image, mask, unaries, crf.dense_crf(image, unaries)))

shown = examples[:3]
figure, axes = plt.subplots(
    len(shown), 4, figsize=(13, 3.2 * len(shown)), squeeze=False
)
for row, (image, mask, unaries, refined) in zip(axes, shown):
    panels = [image, mask, np.argmax(unaries, -1), np.argmax(refined, -1)]
    titles = ["image", "ground truth", "stride-8 unaries (argmax)", "after the CRF"]
    for axis, panel, title in zip(row, panels, titles):
        axis.imshow(panel if panel.ndim == 3 else voc.voc_colormap()[panel])
        axis.set_title(title)
        axis.axis("off")
figure.tight_layout()
plt.show()

# %% [markdown]
# **The trimap curve** (v1 Sec. 4.1, v2 Fig. 5): mean IoU counted only on the
# pixels within N pixels of a ground-truth boundary, for growing N
# (`common.metrics.trimap_mask`; `evaluate.py --trimap 4,8,16`). Near the
# boundary is where an output-stride-8 map is weakest. What to look for: how far
# apart the two curves are, and at which widths; on the 40 VOC pairs
# `bench/crf.py` prints the same numbers for the whole sample.

# %%
WIDTHS = (2, 4, 8, 16, 32)
curves = {"unaries": [], "CRF": []}
for width in WIDTHS:
    for name, index in (("unaries", 2), ("CRF", 3)):
        metric = ConfusionMatrix(len(CRF_CLASSES))
        for example in examples:
            metric.update_state(
                trimap_mask(example[1], width)[None], example[index][None]
            )
        curves[name].append(float(mean_iou(metric.matrix)))
figure, axis = plt.subplots(figsize=(6, 3.6))
for name, values in curves.items():
    axis.plot(WIDTHS, values, marker="o", label=name)
axis.set(
    xlabel="trimap width (pixels from a boundary)",
    ylabel="mean IoU in the band",
    title=f"Trimap IoU on {len(examples)} image(s)",
)
axis.legend()
axis.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Next: `04_segnet`, an encoder-decoder that upsamples with the encoder's pooling
# indices, and `05_compare`, all four architectures on the same data.
