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
# # 00 · PASCAL VOC: what a segmentation label is
#
# A classifier gets one label per image. A **semantic segmentation** network gets one
# label per *pixel*: the label is itself an image, the size of the photo, whose every
# pixel holds a class index (0 = background, 1..20 = aeroplane ... tvmonitor in VOC).
#
# This notebook reads the data exactly as the training scripts do, with
# `common/voc.py`, and looks at it from the files on disk to the batches a model sees.
# It uses PASCAL VOC 2012 when it finds it (`bash data/voc_download.sh`), otherwise
# the built-in `shapes` dataset, which has the same layout and the same kind of files.

# %% [markdown]
# The first cell makes the repository root the working directory (Jupyter starts in
# `notebooks/`), so that `common` and the training scripts import and every path
# below is relative to the root.

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

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image

from common import shapes, voc
from common.constants import IGNORE_LABEL
from common.losses import segmentation_loss
from common.plots import colorize, legend_handles

# common.plots draws to files (Agg); show figures in the notebook again.
# %matplotlib inline

# %% [markdown]
# ## Settings
#
# `QUICK_RUN=1` in the environment makes every notebook of this folder run in well
# under a minute on a CPU (the tests do that). Set `NOTEBOOK_DATASET=shapes` to use
# the synthetic data even where VOC is downloaded.

# %%
QUICK = bool(os.environ.get("QUICK_RUN"))
# The full download, then the 40-image VOC sample the tests use, if either is here.
VOC_DIRS = [
    os.path.join("data", "VOCdevkit", "VOC2012"),
    os.path.join("..", "shared", "data", "voc_sample", "VOC2012"),
]
VOC_DIR = next((path for path in VOC_DIRS if os.path.isdir(path)), None)
DATASET = os.environ.get("NOTEBOOK_DATASET") or ("voc" if VOC_DIR else "shapes")
if DATASET == "voc":
    DATA_DIR, CLASS_NAMES = VOC_DIR, voc.VOC_CLASSES
else:
    DATA_DIR, CLASS_NAMES = shapes.generate_shapes(), shapes.SHAPES_CLASSES
NUM_CLASSES = len(CLASS_NAMES)
print(f"{DATASET} in {DATA_DIR}: {NUM_CLASSES} classes")

# %% [markdown]
# ## The folder layout
#
# VOC 2012 keeps everything for segmentation in four folders:
#
# - `JPEGImages/NAME.jpg`: the photos (17,125 of them; only 2,913 have masks);
# - `ImageSets/Segmentation/{train,val,trainval}.txt`: one image name per line, the
#   splits (1,464 train and 1,449 val images);
# - `SegmentationClass/NAME.png`: the **class** masks this project trains on;
# - `SegmentationObject/NAME.png`: the **instance** masks (1, 2, 3... per object,
#   whatever its class), for instance segmentation; not used here.
#
# The next cell lists what this copy holds; `shapes` and the VOC sample have no
# `SegmentationObject`.

# %%
for folder in (
    "JPEGImages",
    "ImageSets/Segmentation",
    "SegmentationClass",
    "SegmentationObject",
):
    path = os.path.join(DATA_DIR, folder)
    files = sorted(os.listdir(path)) if os.path.isdir(path) else []
    print(f"{folder + '/':<26}{len(files):>6} files  {', '.join(files[:3])}")

pairs = voc.list_pairs(DATA_DIR, "train")
print(f"\ntrain split: {len(pairs)} (image, mask) pairs, e.g.")
for image_path, mask_path in pairs[:2]:
    print(f"  {image_path}  ->  {mask_path}")

# %% [markdown]
# ## A palette PNG: colours on screen, class indices in the file
#
# Open a mask in an image viewer and you see coloured shapes. But the PNG is a
# **palette** ("P" mode) image: each pixel stores one byte, an index into a table of
# 256 colours stored in the file. VOC's table gives index 1 (aeroplane) dark red,
# 15 (person) pink, and so on, so **the byte is the class**. PIL hands us those
# bytes directly; what to look for below: mode `P`, and the file's palette is
# exactly `voc_colormap()`.

# %%
image_path, mask_path = pairs[0]
with Image.open(mask_path) as mask_file:
    print("PIL mode:", mask_file.mode, " size:", mask_file.size)
    pil_indices = np.array(mask_file)  # The bytes themselves: class indices.
    palette = np.array(mask_file.getpalette()[:768], np.uint8).reshape(256, 3)

print("values in the mask:", np.unique(pil_indices))
print("file palette == voc_colormap():", np.array_equal(palette, voc.voc_colormap()))
for index in np.unique(pil_indices):
    name = CLASS_NAMES[index] if index < NUM_CLASSES else "void"
    print(
        f"  index {index:3d} = {name:<12} drawn as RGB {tuple(palette[index].tolist())}"
    )

# %% [markdown]
# The colour of index *i* is not arbitrary: `voc_colormap` spreads the bits of *i*
# over red, green and blue (bit 0 to the top bit of red, bit 1 to green, bit 2 to
# blue, then the next bits one place lower). The figure shows the table with the
# class names; the last swatch is index 255, the cream "void" colour of object
# borders.

# %%
swatches = list(range(NUM_CLASSES)) + [IGNORE_LABEL]
figure, axis = plt.subplots(figsize=(10, 1.6))
axis.imshow(colorize(np.array([swatches])), aspect="auto")
axis.set_xticks(range(len(swatches)))
axis.set_xticklabels([*CLASS_NAMES, "void (255)"], rotation=60, ha="right")
axis.set_yticks([])
axis.set_title(f"The VOC palette: colour of each class index ({DATASET})")
plt.show()

# %% [markdown]
# ## What TensorFlow sees, and `decode_mask`
#
# `tf.io.decode_png` does not return the bytes: it applies the palette and returns
# **RGB colours**. A pipeline that then guesses classes from colours (nearest
# colour, or treating the red channel as the class) silently gets borders and rare
# classes wrong. `common.voc.decode_mask` maps every colour back to its index through
# the exact table, turns the cream border colour into 255, and fails, naming the
# file, on any colour that is not in the table.
#
# What to look for: the RGB tensor has 3 channels, `decode_mask` returns one, and it
# equals PIL's bytes pixel for pixel, for every mask checked.

# %%
png_bytes = tf.io.read_file(mask_path)
print("tf.io.decode_png:", tf.io.decode_png(png_bytes, channels=3).shape, "(colours)")
decoded = voc.decode_mask(png_bytes, mask_path).numpy()
print("decode_mask:     ", decoded.shape, decoded.dtype, "(class indices)")

checked = pairs[: 10 if QUICK else 50]
for _, path in checked:
    with Image.open(path) as mask_file:
        expected = np.array(mask_file)
    assert np.array_equal(voc.decode_mask(tf.io.read_file(path), path), expected), path
print(f"decode_mask == PIL on all {len(checked)} masks checked")

# %% [markdown]
# Image, mask as stored (colours) and mask as the network gets it (indices, drawn
# in grey so that you can see they are just small numbers).

# %%
image = np.array(Image.open(image_path).convert("RGB"))
figure, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(image)
axes[0].set_title(os.path.basename(image_path))
axes[1].imshow(colorize(decoded), interpolation="nearest")
axes[1].set_title("mask, drawn with the palette")
shown = axes[2].imshow(
    np.where(decoded == IGNORE_LABEL, -1, decoded.astype(int)), cmap="gray", vmin=-1
)
axes[2].set_title("class indices (void shown as -1)")
figure.colorbar(shown, ax=axes[2], fraction=0.046)
for axis in axes:
    axis.set_axis_off()
figure.legend(
    handles=legend_handles([decoded], CLASS_NAMES),
    loc="lower center",
    ncol=6,
    frameon=False,
)
figure.suptitle("One training example")
figure.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# ## Void (255) is not background
#
# VOC annotators drew a 5-pixel band of index 255 around every object and over
# regions too hard to label. Those pixels are **void**: nobody says what they are,
# so they must not be trained as background (that would teach the network to shrink
# every object) nor scored. Every script trains with `segmentation_loss()`, a
# cross-entropy with `ignore_class=255`. The cell shows it: changing the prediction
# on a void pixel does not change the loss at all, changing it on a labelled pixel
# does.

# %%
void_share = np.mean(decoded == IGNORE_LABEL)
print(f"void pixels in this mask: {void_share:.1%}")

loss = segmentation_loss()
labels = np.array([[[0, IGNORE_LABEL]]])  # One image, 1 x 2 pixels.
logits = np.zeros((1, 1, 2, NUM_CLASSES), np.float32)
base = float(loss(labels, logits))
on_void, on_labelled = logits.copy(), logits.copy()
on_void[0, 0, 1, 3] = 10.0  # Confidently "class 3" on the void pixel...
on_labelled[0, 0, 0, 3] = 10.0  # ...and on the background pixel.
print(
    f"loss {base:.4f}; after changing the void pixel {float(loss(labels, on_void)):.4f}"
    f"; after changing the labelled pixel {float(loss(labels, on_labelled)):.4f}"
)
print(
    "(ln(num_classes) =",
    round(float(np.log(NUM_CLASSES)), 4),
    "is the loss of a uniform guess)",
)

# %% [markdown]
# ## Class frequencies
#
# `class_pixel_counts` decodes every mask of a split (checking each one) and counts
# the pixels of each class, void left out. What to look for: background dwarfs
# every object class (about three quarters of VOC's pixels), and the object
# classes differ by an order of magnitude. A model can reach a high *pixel
# accuracy* by predicting background everywhere; that is why the scripts report
# mean IoU over classes, and why SegNet offers median-frequency class weights.

# %%
counts, _ = voc.class_pixel_counts(pairs, NUM_CLASSES)
shares = counts / counts.sum()
for name, share in zip(CLASS_NAMES, shares):
    print(f"{name:<14}{share:8.2%}")

figure, axis = plt.subplots(figsize=(10, 3.5))
axis.bar(
    CLASS_NAMES, shares, color=colorize(np.arange(NUM_CLASSES)) / 255, edgecolor="black"
)
axis.set_yscale("log")
axis.set_ylabel("share of labelled pixels (log)")
axis.set_title(f"Class pixel frequencies, {DATASET} train ({len(pairs)} masks)")
axis.tick_params(axis="x", rotation=60)
plt.show()

# %% [markdown]
# ## Batches from `make_dataset`, before and after augmentation
#
# `make_dataset` is the `tf.data` pipeline every script trains on. With
# `training=False` (evaluation) each image keeps its own pixels and is only padded at
# the bottom and right to one common size, the image with the mean colour and the
# mask with void, so that the padding is never scored. With `training=True` each
# example is scaled by a random factor in [0.5, 2], cropped at random to
# `crop_size` and flipped, **with the same random numbers for the image and its
# mask**. Below, the masks are overlaid on the images: they must cover the objects
# exactly after augmentation too (a mask resized with bilinear interpolation, or
# cropped at another place, would show here).

# %%
CROP_SIZE = 128
BATCH_SIZE = 4


def show_batch(images, masks, title):
    """Each image with its mask blended on top; void drawn in cream."""
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    for axis, image, mask in zip(axes, images, masks):
        overlay = 0.5 * image + 0.5 * colorize(mask)
        axis.imshow(overlay.astype(np.uint8), interpolation="nearest")
        axis.set_title(f"{image.shape[0]} x {image.shape[1]}")
        axis.set_axis_off()
    figure.legend(
        handles=legend_handles(masks, CLASS_NAMES),
        loc="lower center",
        ncol=7,
        frameon=False,
    )
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    plt.show()


evaluation = voc.make_dataset(DATA_DIR, "train", BATCH_SIZE, CROP_SIZE, training=False)
images, masks = next(iter(evaluation))
print("evaluation batch:", images.shape, images.dtype, masks.shape, masks.dtype)
show_batch(images.numpy(), masks.numpy(), "Before augmentation (padded, not scaled)")

training = voc.make_dataset(DATA_DIR, "train", BATCH_SIZE, CROP_SIZE, training=True)
images, masks = next(iter(training))
print("training batch:  ", images.shape, images.dtype, masks.shape, masks.dtype)
print("mask values:", np.unique(masks.numpy()), "(classes and void only)")
show_batch(images.numpy(), masks.numpy(), "After augmentation (scale, crop, flip)")

# %% [markdown]
# The images are float32 RGB in [0, 255]: each model normalises inside itself, so
# `model.predict` on a raw image sees what training saw. The masks are int32 class
# indices with 255 kept, for the loss and the metrics to skip. That is everything a
# model of the next notebooks gets; `01_fcn` starts with the first of them.
#
# To check a whole dataset from the command line:
# `python -m common.cli verify data/VOCdevkit/VOC2012 --split train`.
