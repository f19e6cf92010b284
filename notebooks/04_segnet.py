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
# # 04 · SegNet: unpooling with max-pooling indices
#
# SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017,
# https://arxiv.org/abs/1511.00561) is an encoder-decoder like U-Net, with one new
# idea: how the decoder upsamples. Each max-pooling of the encoder remembers **where**
# each maximum was; the matching decoder stage puts its values back at exactly those
# positions, zeros elsewhere, and convolutions fill the zeros in. Boundaries come
# back where the encoder saw them, nothing is learned for the upsampling, and only
# the positions cross from encoder to decoder (U-Net sends whole feature maps).
#
# The two layers are `MaxPoolingWithArgmax2D` and `MaxUnpooling2D` in
# `common/layers.py`; `segnet_train.py` builds SegNet and SegNet-Basic from them.

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
import numpy as np
from keras import layers, ops

import segnet_train
from common import shapes, voc
from common.inference import load_model
from common.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from common.plots import compare_predictions

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` (the tests) trains SegNet-Basic for a few steps, enough to run every
# cell. Without it, both networks below train for `EPOCHS` epochs on `shapes` (the
# script's demo command), or on VOC if `data/VOCdevkit/VOC2012` exists.
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
BATCH_SIZE = 2 if QUICK else 8
OUTPUT_DIR = os.environ.get("NOTEBOOK_OUTPUT_DIR") or tempfile.mkdtemp(
    prefix="04_segnet-"
)
TRAINING_ARGS = [
    *("--dataset", DATASET, "--data-dir", DATA_DIR, "--variant", "basic"),
    *("--crop-size", str(CROP_SIZE), "--batch-size", str(BATCH_SIZE)),
    *("--epochs", str(EPOCHS), "--num-predictions", "0"),  # We draw our own.
]
if QUICK:  # SegNet-Basic's 7 x 7 convolutions are slow on a CPU: validate 2 images.
    TRAINING_ARGS += ["--steps-per-epoch", "3", "--val-steps", "1"]
print(f"{DATASET} in {DATA_DIR}; outputs in {OUTPUT_DIR}")

# %% [markdown]
# ## Max pooling that remembers where
#
# A 4 x 4 single-channel array, pooled 2 x 2. `MaxPoolingWithArgmax2D` returns the
# pooled values, like `MaxPooling2D`, **and** for each one the position of its
# maximum inside its 2 x 2 window, `row * 2 + column`: 0 to 3, the paper's "two bits
# per window". What to look for: adding the window's corner turns each index back
# into the (row, column) of the maximum in the input, and the value there is the
# pooled value.

# %%
array = np.array(
    [
        [1, 6, 2, 0],
        [3, 4, 8, 5],
        [7, 0, 1, 2],
        [2, 5, 9, 3],
    ],
    dtype="float32",
)
batch = array[None, :, :, None]  # (batch 1, 4, 4, channel 1)
pooled, indices = MaxPoolingWithArgmax2D()(batch)
pooled = ops.convert_to_numpy(pooled)[0, :, :, 0]
indices = ops.convert_to_numpy(indices)[0, :, :, 0]
print("pooled:\n", pooled)
print("indices (inside each window):\n", indices)
corner_rows, corner_columns = np.indices(indices.shape) * 2
rows, columns = corner_rows + indices // 2, corner_columns + indices % 2
for value, row, column in zip(pooled.ravel(), rows.ravel(), columns.ravel()):
    assert array[row, column] == value
    print(f"  {value:.0f} came from ({row}, {column})")

# %% [markdown]
# ## Unpooling: values back where they came from
#
# The decoder hands `MaxUnpooling2D` its own values (here 10, 20, 30, 40, to tell
# them from the input) with the encoder's indices, and the tensor that was pooled
# (for its shape). Each value lands at its index; the other three cells of each
# window stay zero: a **sparse** map that the next convolution densifies. The usual
# Keras "SegNet" uses `UpSampling2D` instead, which copies each value into all four
# cells and forgets where the maximum was. What to look for in the picture: the
# unpooled values sit exactly on the red squares (the encoder's maxima); the
# `UpSampling2D` ones are blocks.

# %%
decoder_values = np.array([[10, 20], [30, 40]], dtype="float32")[None, :, :, None]
unpooled = MaxUnpooling2D()([decoder_values, indices[None, :, :, None], batch])
unpooled = ops.convert_to_numpy(unpooled)[0, :, :, 0]
repeated = ops.convert_to_numpy(layers.UpSampling2D(2)(decoder_values))[0, :, :, 0]
print("unpooled with the indices:\n", unpooled)
print("UpSampling2D:\n", repeated)

figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
panels = (
    (array, "encoder input, maxima in red"),
    (pooled, "max pooled (2 x 2)"),
    (unpooled, "MaxUnpooling2D (indices)"),
    (repeated, "UpSampling2D (nearest)"),
)
for axis, (panel, title) in zip(axes, panels):
    axis.imshow(panel, cmap="Blues", vmin=0)
    for (row, column), value in np.ndenumerate(panel):
        axis.text(column, row, f"{value:.0f}", ha="center", va="center")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
for axis in (axes[0], axes[2]):
    for row, column in zip(rows.ravel(), columns.ravel()):
        axis.add_patch(
            plt.Rectangle(
                (column - 0.5, row - 0.5), 1, 1, fill=False, color="red", lw=2
            )
        )
figure.suptitle("Max pooling with argmax, then unpooling (SegNet, Fig. 3)")
figure.tight_layout()
plt.show()

# %% [markdown]
# Odd sizes work too: pooling pads the last row and column ("same"), and unpooling
# takes its output shape from the tensor that was pooled, so 5 x 5 comes back as
# 5 x 5, not 6 x 6 (CamVid's 360 x 480 frames pool to 45 rows and back).

# %%
odd = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype("float32")
odd_pooled, odd_indices = MaxPoolingWithArgmax2D()(odd)
odd_back = ops.convert_to_numpy(MaxUnpooling2D()([odd_pooled, odd_indices, odd]))
print(odd.shape, "->", tuple(odd_pooled.shape), "->", odd_back.shape)
kept = odd_back != 0
print(
    "every nonzero unpooled value is the input value there:",
    np.array_equal(odd_back[kept], odd[kept]),
)

# %% [markdown]
# ## SegNet vs `UpSampling2D` on the same data
#
# `segnet_train.py --upsampling nearest` swaps every `MaxUnpooling2D` for
# `UpSampling2D` (and a crop for odd sizes), all else equal: the same SegNet-Basic
# (four 7 x 7, 64-channel stages, Sec. 3.1), the same data, seed and budget. Neither
# upsampling has weights, so the parameter counts match; only what the decoder
# knows about *where* differs.

# %%
for upsampling in ("indices", "nearest"):
    model = segnet_train.build_segnet(
        len(CLASS_NAMES),
        variant="basic",
        upsampling=upsampling,
        input_shape=(CROP_SIZE, CROP_SIZE, 3),
    )
    print(f"{upsampling:<8} {model.count_params():,} parameters")
model.summary(line_length=100)

# %% [markdown]
# Both trained with `segnet_train.main`, the function behind `python segnet_train.py
# ...`. Watch the per-class IoU table after each epoch.

# %%
results = {}
for upsampling in ("indices", "nearest"):
    argv = [
        *TRAINING_ARGS,
        *("--upsampling", upsampling),
        *("--output-dir", os.path.join(OUTPUT_DIR, upsampling)),
    ]
    print("python segnet_train.py", " ".join(argv))
    results[upsampling] = segnet_train.main(argv)

for upsampling, result in results.items():
    print(f"{upsampling:<8} validation mean IoU {result['mean_iou']:.3f}")

# %% [markdown]
# The same validation images through both. What to look for after a real training
# (after the quick run both are still noise): with the indices, object edges follow
# the image; with `UpSampling2D`, edges come out blockier, since each decoder value
# was spread over a 2 x 2 block at every stage.

# %%
val_pairs = voc.list_pairs(DATA_DIR, "val")[: 2 if QUICK else 4]
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
for upsampling in ("indices", "nearest"):
    model = load_model(os.path.join(OUTPUT_DIR, upsampling, "best.keras"))
    labels = np.argmax(model.predict(images, verbose=0), axis=-1)
    predictions[f"SegNet-Basic, {upsampling}"] = voc.remove_padding(labels, sizes)
compare_predictions(
    voc.remove_padding(images, sizes),  # Each image at its own size again.
    voc.remove_padding(masks, sizes),
    predictions,
    CLASS_NAMES,
    title=f"Unpooling with indices vs UpSampling2D, {EPOCHS} epoch(s) each",
)
plt.show()

# %% [markdown]
# The full SegNet (VGG-16 encoder from ImageNet, 29.4M parameters) and the paper's
# CamVid setting with median-frequency class weights are at the top of
# `segnet_train.py`.
