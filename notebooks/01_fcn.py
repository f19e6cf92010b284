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
# # 01 · Fully Convolutional Networks (FCN-32s, 16s, 8s)
#
# Long, Shelhamer and Darrell (CVPR 2015, https://arxiv.org/abs/1411.4038) turned an
# ImageNet classifier into a segmenter with two ideas, both in `fcn_train.py`:
#
# 1. a fully connected layer **is** a convolution whose kernel covers its whole
#    input, so the classifier runs on images of any size and outputs a map of
#    class scores;
# 2. that coarse map (one score per 32 x 32 block) is brought back to pixels by a
#    **transposed convolution** initialised to bilinear interpolation, and finer
#    layers are added in on the way (16s, 8s).
#
# This notebook takes each idea apart on small arrays, checks it against the code
# the script runs, and then trains the three variants briefly on the same data.

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
import tensorflow as tf
from keras import layers

import fcn_train
from common import shapes, voc
from common.inference import load_model
from common.layers import bilinear_kernel
from common.plots import compare_predictions

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` (the tests) trains a tiny network for a few steps: enough to run every
# cell, not to learn anything. Without it, each variant trains for `EPOCHS` epochs
# at 1/8 of VGG-16's width on `shapes` (a few minutes each on a CPU), or on VOC if
# `data/VOCdevkit/VOC2012` exists (use a GPU and `WIDTH = 1.0` for that).
#
# The runs write their checkpoints and plots under `OUTPUT_DIR`: a new temporary
# folder each time you run the notebook (its path is printed below). To keep them
# somewhere else, set the environment variable `NOTEBOOK_OUTPUT_DIR` to an empty
# folder before starting Jupyter (the tests point it at a folder of their own); a
# folder that already holds a run would resume that run.

# %%
QUICK = bool(os.environ.get("QUICK_RUN"))
EPOCHS = 1 if QUICK else 10
VOC_DIR = os.path.join("data", "VOCdevkit", "VOC2012")
DATASET = os.environ.get("NOTEBOOK_DATASET") or (
    "voc" if os.path.isdir(VOC_DIR) else "shapes"
)
DATA_DIR = VOC_DIR if DATASET == "voc" else shapes.generate_shapes()
CLASS_NAMES = voc.VOC_CLASSES if DATASET == "voc" else shapes.SHAPES_CLASSES
WIDTH = 0.0625 if QUICK else 0.125  # Fraction of VGG-16's channels.
CROP_SIZE = 64 if QUICK or DATASET == "shapes" else 128  # shapes: 64 x 64 images.
OUTPUT_DIR = os.environ.get("NOTEBOOK_OUTPUT_DIR") or tempfile.mkdtemp(prefix="01_fcn-")
TRAINING_ARGS = [
    *("--dataset", DATASET, "--data-dir", DATA_DIR),
    *("--backbone-weights", "none", "--width", str(WIDTH)),
    *("--optimizer", "adam", "--learning-rate", "1e-3"),
    *("--crop-size", str(CROP_SIZE), "--epochs", str(EPOCHS)),
    *("--num-predictions", "0"),  # This notebook draws its own.
]
if QUICK:
    TRAINING_ARGS += ["--batch-size", "4", "--steps-per-epoch", "3", "--val-steps", "1"]
print(f"{DATASET} in {DATA_DIR}; outputs in {OUTPUT_DIR}")

# %% [markdown]
# ## 1. A fully connected layer is a convolution
#
# VGG-16's `fc1` flattens the last 7 x 7 x 512 feature map into 25,088 numbers and
# multiplies by a (25088, 4096) matrix. `Flatten` orders the numbers as (row,
# column, channel), which is exactly the order of a convolution kernel's first three
# axes, so the same matrix **reshaped** to (7, 7, 512, 4096) is a 7 x 7 convolution
# with 4,096 filters: `fc6` in `fcn_train.py`, filled by `copy_vgg16_weights` with
# one `ops.reshape`.
#
# The real `fc1` is 411 MB, so the cell does the same with a small random one: a 7 x 7
# x 8 input and 16 units. What to look for: on a 7 x 7 input the convolution gives one
# position whose 16 values equal the dense layer's; on a larger input it gives a
# *map* of them, one per 7 x 7 window, each equal to the dense layer applied to that
# window. That map is what makes the network fully convolutional.

# %%
rng = np.random.default_rng(0)
dense = layers.Dense(16)
dense.build((None, 7 * 7 * 8))
conv = layers.Conv2D(16, 7)
conv.build((None, None, None, 8))
conv.kernel.assign(keras.ops.reshape(dense.kernel, (7, 7, 8, 16)))  # fc1 -> fc6
conv.bias.assign(dense.bias)

window = rng.normal(size=(1, 7, 7, 8)).astype("float32")
from_dense = dense(window.reshape(1, -1))  # (1, 16)
from_conv = conv(window)  # (1, 1, 1, 16)
print("dense:", from_dense.shape, " conv:", from_conv.shape)
print("same numbers:", np.allclose(from_dense, from_conv[:, 0, 0], atol=1e-5))

image = rng.normal(size=(1, 12, 10, 8)).astype("float32")
score_map = conv(image)  # (1, 6, 4, 16): one "fc1 output" per 7 x 7 window.
row, column = 3, 2
patch = image[:, row : row + 7, column : column + 7].reshape(1, -1)
print("on a 12 x 10 input the convolution gives a map:", score_map.shape)
print(
    f"position ({row}, {column}) == dense on that window:",
    np.allclose(score_map[:, row, column], dense(patch), atol=1e-5),
)
print(f"VGG-16's fc6 kernel: 7*7*512*4096 = {7 * 7 * 512 * 4096:,} weights")

# %% [markdown]
# ## 2. Transposed convolution, step by step
#
# The score map is 32 times smaller than the image. FCN upsamples it with a
# `Conv2DTranspose` of stride *f* ("backwards strided convolution", Sec. 3.3). One
# way to see what it computes: **insert f - 1 zeros between the input pixels, pad
# the border, and run an ordinary convolution** (with the kernel flipped). The cell
# does that by hand for a 3 x 3 input, stride 2 and a 4 x 4 kernel, and compares it
# with Keras. What to look for: the zero-inserted array, and `True` at the end.
# (Keras' `padding="same"` keeps the 6 x 6 centre of the 8 x 8 "full" result.)

# %%
inputs = np.arange(1, 10, dtype="float32").reshape(3, 3)
kernel = rng.normal(size=(4, 4)).astype("float32")  # Any kernel: not symmetric.
stride, size = 2, 4

zero_inserted = np.zeros((3 * stride - 1, 3 * stride - 1), "float32")
zero_inserted[::stride, ::stride] = inputs  # (5, 5)
padded = np.pad(zero_inserted, size - 1)  # (11, 11)
flipped = kernel[::-1, ::-1]
full = np.array(
    [
        [np.sum(padded[i : i + size, j : j + size] * flipped) for j in range(8)]
        for i in range(8)
    ]
)  # (8, 8) = ((3 - 1) * stride + size) squared
by_hand = full[1:7, 1:7]  # "same": 3 * stride = 6; (8 - 6) / 2 = 1 cut per side

transposed = layers.Conv2DTranspose(1, size, strides=stride, padding="same")
transposed.build((None, 3, 3, 1))
transposed.kernel.assign(kernel[:, :, None, None])
transposed.bias.assign([0.0])
by_keras = transposed(inputs[None, :, :, None])[0, :, :, 0].numpy()

print("input with zeros inserted:\n", zero_inserted.astype(int))
print("by hand == keras.layers.Conv2DTranspose:", np.allclose(by_hand, by_keras))

figure, axes = plt.subplots(1, 4, figsize=(13, 3.4))
panels = (
    (inputs, "input 3 x 3"),
    (padded, "zeros inserted, border padded"),
    (flipped, "kernel (flipped), 4 x 4"),
    (by_keras, "output 6 x 6"),
)
for axis, (array, title) in zip(axes, panels):
    shown = axis.imshow(array, cmap="viridis")
    axis.set_title(title)
    figure.colorbar(shown, ax=axis, fraction=0.046)
figure.suptitle("Transposed convolution, stride 2 = zero insertion + convolution")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The bilinear kernel, and why it equals bilinear resizing
#
# Which kernel makes that operation *bilinear interpolation*? Each output pixel
# should mix its nearest input pixels with weights that fall off linearly with
# distance, over a distance of one input pixel = *f* output pixels. Along one axis
# the weights of a kernel of size 2*f* are `1 - |i - centre| / f`, and in 2-D their
# outer product. Written out here, then checked against
# `common.layers.bilinear_kernel` (which the `BilinearUpsampling` initializer puts on
# the diagonal of FCN's upsampling kernels):


# %%
def bilinear_taps(size):
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - np.abs(np.arange(size) - center) / factor


print("size 4 (x2):", bilinear_taps(4))
for size in (3, 4, 16, 64):
    taps = bilinear_taps(size)
    assert np.allclose(np.outer(taps, taps), bilinear_kernel(size)), size
print("np.outer(taps, taps) == bilinear_kernel(size) for sizes 3, 4, 16, 64")

# %% [markdown]
# Now the claim of the FCN paper: a stride-*f* transposed convolution with this
# kernel **is** bilinear upsampling. The cell upsamples a random 12 x 12 map by 2, 4
# and 8 with `fcn_train.bilinear_upsampling`, the function that builds FCN's
# upsampling layers, and compares it with `tf.image.resize(method="bilinear")`. What
# to look for: a difference of ~1e-7 (float rounding) everywhere except a band of *f*
# pixels at the border, where the transposed convolution sees zeros beyond the edge
# and `resize` repeats the edge pixel. (The "Geometry" note at the top of
# `fcn_train.py` explains how the script lines up the grids of the different strides.)

# %%
score = rng.uniform(size=(1, 12, 12, 1)).astype("float32")
for factor in (2, 4, 8):
    upsampled = fcn_train.bilinear_upsampling(
        tf.constant(score), factor, trainable=False, name=f"upscore{factor}"
    )
    ours = upsampled[0, :, :, 0].numpy()
    resized = tf.image.resize(score, (12 * factor, 12 * factor), "bilinear")
    difference = np.abs(ours - resized[0, :, :, 0].numpy())
    inside = difference[factor:-factor, factor:-factor].max()
    print(
        f"x{factor}: {ours.shape}, max difference inside {inside:.1e}, "
        f"at the border {difference.max():.2f}"
    )

figure, axes = plt.subplots(1, 3, figsize=(11, 3.6))
axes[0].imshow(score[0, :, :, 0], vmin=0, vmax=1)
axes[0].set_title("12 x 12 score map")
axes[1].imshow(ours, vmin=0, vmax=1)
axes[1].set_title("Conv2DTranspose, bilinear init, x8")
axes[2].imshow(difference, cmap="magma")
axes[2].set_title("|difference| with tf.image.resize")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 4. FCN-32s, 16s and 8s
#
# FCN-32s upsamples the stride-32 scores by 32 in one go. FCN-16s first upsamples them
# by 2, adds class scores computed from `pool4` (stride 16), then upsamples by 16;
# FCN-8s adds `pool3` (stride 8) too. The skip score layers start at zero, so a finer
# net begins as the coarser one. The summary of the tiny FCN-8s, built for a
# `CROP_SIZE` input so that every size is known, shows the two `score_pool` layers,
# the `fuse_pool` additions and the upsampling layers (`upscore2`, `upscore_pool4`,
# `upscore8`) with the size of their outputs: 1/16, 1/8 and all of the input.

# %%
model = fcn_train.build_fcn(
    len(CLASS_NAMES), "8s", width=WIDTH, input_shape=(CROP_SIZE, CROP_SIZE, 3)
)
model.summary(line_length=100)

# %% [markdown]
# Each variant is trained with `fcn_train.main`, the function behind `python
# fcn_train.py ...`, with the same data, budget and seed, so the only difference is
# the skips. The equivalent command line is printed first. Each run writes
# `best.keras`, `history.csv` and `results.json` to its own folder.

# %%
results = {}
for variant in fcn_train.VARIANTS:
    argv = [
        *TRAINING_ARGS,
        *("--variant", variant),
        *("--output-dir", os.path.join(OUTPUT_DIR, variant)),
    ]
    print("python fcn_train.py", " ".join(argv))
    results[variant] = fcn_train.main(argv)

for variant, result in results.items():
    print(f"FCN-{variant}: validation mean IoU {result['mean_iou']:.3f}")

# %% [markdown]
# The same validation images through the three trained networks. What to look for
# after a real training (the quick run's networks are still untrained): FCN-32s
# finds the objects but draws them as blobs, since every score comes from a 32-pixel
# grid; with the pool4 and pool3 skips the corners and thin parts sharpen.

# %%
val_pairs = voc.list_pairs(DATA_DIR, "val")[:3]
sizes = voc.image_sizes(val_pairs)
val_ds = voc.make_dataset(
    DATA_DIR,
    "val",
    len(val_pairs),
    CROP_SIZE,
    training=False,
    max_images=len(val_pairs),
)
images, masks = (tensor.numpy() for tensor in next(iter(val_ds)))
predictions = {}
for variant in fcn_train.VARIANTS:
    model = load_model(os.path.join(OUTPUT_DIR, variant, "best.keras"))
    predictions[variant] = np.argmax(model.predict(images, verbose=0), axis=-1)

compare_predictions(
    voc.remove_padding(images, sizes),  # Each image at its own size again.
    voc.remove_padding(masks, sizes),
    {
        f"FCN-{variant}": voc.remove_padding(predictions[variant], sizes)
        for variant in fcn_train.VARIANTS
    },
    CLASS_NAMES,
    title=f"FCN-32s vs 16s vs 8s on {DATASET} val, {EPOCHS} epoch(s) each",
)
plt.show()

# %% [markdown]
# To train the real thing on VOC (ImageNet VGG-16, the paper's staged recipe), see
# the commands at the top of `fcn_train.py`. Next: `02_unet`, where the skips carry
# whole feature maps instead of class scores.
