"""Reading PASCAL VOC 2012 (and datasets laid out like it) into `tf.data`.

A VOC segmentation label is a *palette* PNG: every pixel stores an index into a
256-colour table, and the index is the class (0 = background, 1..20 = the
objects, 255 = "void": object borders and difficult regions). TensorFlow's PNG
decoder expands the palette to RGB, so `decode_mask` maps every colour back to
its index with an exact lookup. Nothing here ever guesses a class from a colour
that is not in the table.

Images leave the pipeline as float32 RGB in **[0, 255]**; every model of this
project normalises inside the model (its first layers), so `model.predict` on a
raw image sees exactly what training saw.

Images that are not 8-bit RGB (greyscale, 16-bit, RGBA, multi-band TIFF) keep
their own bands and values: an `ImageFormat` says how a dataset's images are
stored (read from the first training image; every other image must match it),
and holds each band's mean and standard deviation over the training images,
with which the model standardises its input (`common.layers.BandNormalization`)
and the pipeline pads (`ImageFormat.pad_value`).

Black-and-white masks (0 = one class, 255 = the other: medical, document and
the U-Net paper's ISBI membrane data) are read with `mask_values="binary"`
(`--mask-values binary`). By default 255 means void, so such a mask would be
almost all void; `check_mask_values` stops with an error before that happens.

    python -m common.cli verify data/VOCdevkit/VOC2012 --split train

checks a whole dataset (`verify` below) and prints the class pixel frequencies.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tifffile
from PIL import Image

from common import augment
from common.backend import tf
from common.constants import IGNORE_LABEL, IMAGE_MEAN
from common.errors import DatasetError

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# CamVid as the SegNet tutorial ships it: train/ trainannot/ val/ valannot/
# test/ testannot/, 360x480, single-channel masks with 11 = void.
CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "signsymbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
CAMVID_VOID = 11
VOC_DIR = os.path.join("data", "VOCdevkit", "VOC2012")
CAMVID_DIR = os.path.join("data", "CamVid")
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", *TIFF_EXTENSIONS)
# How a single-channel mask's grey values map to classes: "index" (the value is
# the class), "binary" (0 -> class 0, 255 -> class 1). None = index, after
# `check_mask_values` has made sure the masks are not black-and-white.
MASK_VALUES = ("index", "binary")
DOWNLOAD_HINT = (
    "Download PASCAL VOC 2012 with `bash data/voc_download.sh`, point --data-dir "
    "at the folder that holds JPEGImages/, or try the built-in data with "
    "--dataset shapes."
)
# What to do about a missing dataset folder, by layout ("auto": your own data).
MISSING_FOLDER_HINTS = {
    "voc": DOWNLOAD_HINT,
    "camvid": "Point --data-dir at the folder that holds train/, trainannot/, "
    "val/ and valannot/ (CamVid as the SegNet tutorial ships it).",
    "auto": "Point --data-dir at the folder that holds SPLIT/images/ and "
    "SPLIT/masks/ (or CamVid's SPLIT/ and SPLITannot/), e.g. train/images/; "
    "for PASCAL VOC use --dataset voc.",
}
VERIFY_HINT = "`python -m common.cli verify DATA_DIR --split SPLIT` checks every file."


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """Return the VOC palette: colour i spreads the bits of i over R, G and B.

    Bit 0 of the index goes to the top bit of red, bit 1 to green, bit 2 to
    blue, then bits 3-5 to the next-lower bits, and so on (VOCdevkit's
    `labelcolormap.m`). Index 255 comes out as (224, 224, 192), the border colour.
    """
    colormap = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, color = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                color[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colormap[index] = color
    return colormap


VOC_COLORMAP = tuple(tuple(int(c) for c in rgb) for rgb in voc_colormap(21))
VOID_COLOR = tuple(int(c) for c in voc_colormap()[IGNORE_LABEL])


# Bit depths by the name of a band's storage type, for messages.
BIT_DEPTHS = {"uint8": "8-bit", "uint16": "16-bit"}


@dataclass(frozen=True)
class ImageFormat:
    """How a dataset's images are stored, and each band's statistics.

    `bands` per pixel (1 grey, 3 RGB, 4 RGBA, any number in a TIFF) and the
    NumPy `dtype` of one stored band ("uint8", "uint16", "float32", ...);
    `tiff`: the files are TIFFs, read with tifffile, else images TensorFlow
    decodes (PNG, JPEG, BMP). Three bands of uint8 are RGB (`is_rgb`): each
    model normalises them its own way (Caffe's BGR mean for VGG, [-1, 1] for
    U-Net) and they are padded with `IMAGE_MEAN`, as ever. Any other format
    is standardised band by band inside the model with `band_mean` and
    `band_std` (`common.layers.BandNormalization`), measured on the training
    images (`band_statistics`), and padded with `band_mean`, which
    standardises to 0.
    """

    bands: int = 3
    dtype: str = "uint8"
    tiff: bool = False
    band_mean: tuple[float, ...] | None = None
    band_std: tuple[float, ...] | None = None

    @property
    def is_rgb(self) -> bool:
        return self.bands == 3 and self.dtype == "uint8"

    @property
    def pad_value(self) -> tuple[float, ...]:
        """One value per band: the "average" pixel that padding adds."""
        if self.is_rgb:
            return IMAGE_MEAN
        if self.band_mean is None:
            raise ValueError(f"{self.storage()} images need band statistics to pad.")
        return self.band_mean

    def storage(self) -> str:
        """E.g. "3 bands, 8-bit", "1 band, 16-bit", "5 bands, float32, TIFF"."""
        text = f"{self.bands} band{'' if self.bands == 1 else 's'}, "
        text += BIT_DEPTHS.get(self.dtype, self.dtype)
        return text + (", TIFF" if self.tiff else "")

    def describe(self) -> str:
        """What a training run prints about its images and their normalisation."""
        if self.is_rgb:
            return f"{self.storage()} (RGB): each model normalises them its own way"
        if self.band_mean is None:
            return self.storage()
        mean = ", ".join(f"{value:.6g}" for value in self.band_mean)
        std = ", ".join(f"{value:.6g}" for value in self.band_std)
        return (
            f"{self.storage()}; per-band mean {mean}, std {std} (training images): "
            "standardised band by band inside the model"
        )


RGB = ImageFormat()


@dataclass(frozen=True)
class DatasetSpec:
    """What a training script needs to know about a dataset besides its files."""

    data_dir: str
    layout: str  # "voc", "camvid" or "folder"
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_LABEL
    mask_values: str | None = None  # "index", "binary" or None: see MASK_VALUES.
    image_format: ImageFormat = RGB

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _rgb_codes(colors: tf.Tensor) -> tf.Tensor:
    """Pack (..., 3) uint8 colours into one int32 per colour: R*65536 + G*256 + B."""
    colors = tf.cast(colors, tf.int32)
    return colors[..., 0] * 65536 + colors[..., 1] * 256 + colors[..., 2]


def _palette_to_indices(rgb: tf.Tensor, filename: tf.Tensor | str) -> tf.Tensor:
    """Map every pixel's colour to its VOC class index, exactly, or fail."""
    palette = np.array(list(VOC_COLORMAP) + [VOID_COLOR], np.int32)
    codes = palette[:, 0] * 65536 + palette[:, 1] * 256 + palette[:, 2]
    indices = tf.constant(list(range(len(VOC_COLORMAP))) + [IGNORE_LABEL], tf.uint8)
    matches = tf.equal(_rgb_codes(rgb)[..., None], codes)  # (H, W, 22)
    known = tf.reduce_any(matches, axis=-1)
    first_unknown = tf.boolean_mask(rgb, tf.logical_not(known))[:1]
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        [
            "Mask",
            filename,
            "has a colour that is not in the VOC palette, RGB =",
            first_unknown,
            ". Save masks as VOC palette PNGs or as single-channel class-index PNGs "
            "(black-and-white masks: --mask-values binary).",
        ],
        summarize=3,
    )
    with tf.control_dependencies([check]):
        return tf.gather(indices, tf.argmax(matches, axis=-1, output_type=tf.int32))


def decode_mask(
    png_bytes: tf.Tensor, filename: tf.Tensor | str = "<mask>"
) -> tf.Tensor:
    """Decode a segmentation PNG to class indices, `(H, W)` uint8.

    Two kinds of file are exact:
    - VOC `SegmentationClass` palette PNGs. `tf.io.decode_png` expands the
      palette to RGB, so each colour is looked up in `VOC_COLORMAP` (and the
      border colour (224, 224, 192) becomes 255). An unknown colour is an error
      naming `filename`, never a silent background.
    - Single-channel index PNGs (SegmentationClassAug, CamVid, your own masks):
      the grey value is the class index.
    Graph-compatible, so it runs inside `Dataset.map`.
    """
    decoded = tf.io.decode_png(png_bytes, channels=0)  # palette -> RGB(A)
    is_index_png = tf.shape(decoded)[-1] <= 2  # grey, or grey + alpha
    return tf.cond(
        is_index_png,
        lambda: decoded[..., 0],
        lambda: _palette_to_indices(decoded[..., :3], filename),
    )


def decode_binary_mask(
    png_bytes: tf.Tensor,
    filename: tf.Tensor | str = "<mask>",
    ignore_index: int = IGNORE_LABEL,
) -> tf.Tensor:
    """Decode a black-and-white mask PNG: 0 -> class 0, 255 -> class 1, `(H, W)` uint8.

    Any PNG kind works (1-bit, grey, grey + alpha, RGB, palette): it is read as
    grey, and black and white stay exactly 0 and 255. Every other grey value
    is an error naming `filename` (a JPEG-compressed or anti-aliased mask has
    grey edges, whose class is a guess), except `ignore_index` when it is not
    255: that value becomes void (255).
    """
    grey = tf.io.decode_png(png_bytes, channels=1)[..., 0]
    has_void = ignore_index != IGNORE_LABEL  # 255 is a class here, not void.
    valid = (grey == 0) | (grey == 255)
    if has_void:
        valid |= grey == ignore_index
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            "Mask",
            filename,
            "holds the grey value",
            tf.boolean_mask(grey, tf.logical_not(valid))[:1],
            "but --mask-values binary reads only 0 (class 0) and 255 (class 1). "
            "Save it as an exact black-and-white PNG (no JPEG, no smoothing).",
        ],
    )
    with tf.control_dependencies([check]):
        classes = tf.where(grey == 255, tf.constant(1, tf.uint8), grey)
        if has_void:
            classes = tf.where(
                grey == ignore_index, tf.constant(IGNORE_LABEL, tf.uint8), classes
            )
        return classes


def _check_labels(
    mask: tf.Tensor,
    image: tf.Tensor,
    mask_path: tf.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_LABEL,
) -> tf.Tensor:
    """Fail, naming the file, on a size mismatch or an out-of-range class index.

    Runs on the mask's own values, before `ignore_index` becomes 255, so that a
    255 in a dataset whose void is another value is an error, not void.
    """
    in_range = tf.logical_or(mask < num_classes, tf.equal(mask, ignore_index))
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(mask), tf.shape(image)[:2])),
            [
                "Mask",
                mask_path,
                "has size",
                tf.shape(mask),
                "but its image has",
                tf.shape(image)[:2],
            ],
        ),
        tf.debugging.Assert(
            tf.reduce_all(in_range),
            [
                "Mask",
                mask_path,
                "holds class index",
                tf.reduce_max(tf.boolean_mask(mask, tf.logical_not(in_range))),
                f"outside 0..{num_classes - 1} and not {ignore_index} (void). Check "
                "--num-classes, --ignore-index and --mask-values.",
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(mask)


def read_tiff(path: str | bytes, bands: int | None = None) -> np.ndarray:
    """A TIFF's pixels, `(H, W, bands)` in the file's own dtype, with tifffile.

    Bands come last whether the file stores them per pixel (axes YXS) or as
    planes or pages (SYX, QYX); one plane is one band. A file tifffile cannot
    read, or with other than `bands` bands, is a `ValueError` naming it.
    """
    path = np.asarray(path).item()  # tf.numpy_function passes a 0-d array.
    path = path.decode() if isinstance(path, bytes) else path
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            array, axes = series.asarray(), series.axes
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as error:
        raise ValueError(f"Cannot read {path!r} as a TIFF ({error}).") from None
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and axes[1:] == "YX":  # Planes first: move them last.
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 3 or axes[:2] != "YX":
        raise ValueError(
            f"{path!r} holds a {axes} array of shape {array.shape}; expected one "
            "image of height x width x bands."
        )
    if bands is not None and array.shape[-1] != bands:
        raise ValueError(
            f"Image {path!r} has {array.shape[-1]} bands but the other images of "
            f"this dataset have {bands}."
        )
    return array


def load_image(
    image_path: tf.Tensor | str, image_format: ImageFormat = RGB
) -> tf.Tensor:
    """Read one image: uint8 `(H, W, 3)` for RGB, else float32 `(H, W, bands)`.

    RGB is read as ever: any file TensorFlow decodes, as three bands (a grey
    JPEG too). Other formats keep their values (0..65535 for 16-bit PNGs) and
    bands; a file with other bands than `image_format` is an error naming it.
    Graph-compatible, so it runs inside `Dataset.map`; TIFFs go through
    tifffile in `tf.numpy_function`.
    """
    dtype = tf.uint8 if image_format.is_rgb else tf.float32
    if image_format.tiff:
        image = tf.numpy_function(
            lambda path: read_tiff(path, image_format.bands).astype(
                dtype.as_numpy_dtype
            ),
            [image_path],
            dtype,
            stateful=False,
        )
        return tf.ensure_shape(image, (None, None, image_format.bands))
    data = tf.io.read_file(image_path)
    if image_format.is_rgb:
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    stored = tf.uint16 if image_format.dtype == "uint16" else tf.uint8
    image = tf.io.decode_png(data, channels=0, dtype=stored)
    bands = tf.shape(image)[-1]
    check = tf.debugging.Assert(
        tf.equal(bands, image_format.bands),
        [
            "Image",
            image_path,
            "has",
            bands,
            f"bands but the other images of this dataset have {image_format.bands}.",
        ],
    )
    with tf.control_dependencies([check]):
        image = tf.cast(image, dtype)
    return tf.ensure_shape(image, (None, None, image_format.bands))


def load_pair(
    image_path: tf.Tensor,
    mask_path: tf.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_LABEL,
    mask_values: str | None = None,
    image_format: ImageFormat = RGB,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Read one example: image `(H, W, 3)` uint8 RGB, mask `(H, W)` uint8 indices.

    `ignore_index` is the dataset's own void value (CamVid uses 11); it is
    remapped to `IGNORE_LABEL` (255) so that the rest of the project only ever
    sees 255. `mask_values="binary"` reads black-and-white masks
    (`decode_binary_mask`); otherwise grey values are class indices. Images
    that are not RGB are float32 `(H, W, bands)` (`load_image`).
    """
    image = load_image(image_path, image_format)
    mask_bytes = tf.io.read_file(mask_path)
    if mask_values == "binary":
        mask = decode_binary_mask(mask_bytes, mask_path, ignore_index)
        return image, _check_labels(mask, image, mask_path, num_classes)
    mask = _check_labels(
        decode_mask(mask_bytes, mask_path), image, mask_path, num_classes, ignore_index
    )
    if ignore_index != IGNORE_LABEL:
        mask = tf.where(mask == ignore_index, tf.constant(IGNORE_LABEL, tf.uint8), mask)
    return image, mask


# --------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------


def detect_layout(data_dir: str) -> str:
    """Return "voc", "camvid" or "folder" from the sub-folders of `data_dir`."""
    check_dataset_folder(data_dir)
    entries = set(os.listdir(data_dir))
    if "ImageSets" in entries and "JPEGImages" in entries:
        return "voc"
    if "trainannot" in entries:
        return "camvid"
    if any(os.path.isdir(os.path.join(data_dir, e, "masks")) for e in entries):
        return "folder"
    raise DatasetError(
        f"{data_dir!r} is not a dataset folder this project knows. Expected one of: "
        "VOC (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/), CamVid "
        "(train/, trainannot/, val/, valannot/) or SPLIT/images/ + SPLIT/masks/. "
        + DOWNLOAD_HINT
    )


def _voc_pairs(data_dir: str, split: str) -> list[tuple[str, str]]:
    split_file = os.path.join(data_dir, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetError(
            f"Split file {split_file!r} does not exist (splits are train, val, "
            "trainval; train_aug needs SBD)."
        )
    with open(split_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    # SBD's extra masks (train_aug) are single-channel index PNGs in their own folder.
    mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    return [
        (
            os.path.join(data_dir, "JPEGImages", f"{image_id}.jpg"),
            os.path.join(data_dir, mask_dir, f"{image_id}.png"),
        )
        for image_id in ids
    ]


def _stem_pairs(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    """Pair `image_dir/NAME.jpg|png` with `mask_dir/NAME.png` (CamVid, folders)."""
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise DatasetError(f"Folder {folder!r} does not exist.")
    names = sorted(
        n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS)
    )
    return [
        (
            os.path.join(image_dir, n),
            os.path.join(mask_dir, os.path.splitext(n)[0] + ".png"),
        )
        for n in names
    ]


def check_dataset_folder(data_dir: str, layout: str = "auto") -> None:
    """Refuse a dataset folder that is not there, saying what belongs in it."""
    if not os.path.isdir(data_dir):
        hint = MISSING_FOLDER_HINTS.get(layout, MISSING_FOLDER_HINTS["auto"])
        raise DatasetError(f"Dataset folder {data_dir!r} does not exist. {hint}")


def list_pairs(
    data_dir: str, split: str, layout: str = "auto"
) -> list[tuple[str, str]]:
    """Return `(image_path, mask_path)` for every example of `split`.

    Layouts: "voc" (ImageSets/Segmentation/SPLIT.txt), "camvid" (SPLIT/ and
    SPLITannot/, as in the SegNet tutorial) and "folder" (SPLIT/images/ and
    SPLIT/masks/ with the same file stems). Every listed file must exist.
    """
    check_dataset_folder(data_dir, layout)
    layout = detect_layout(data_dir) if layout == "auto" else layout
    if layout == "voc":
        pairs = _voc_pairs(data_dir, split)
    elif layout == "camvid":
        pairs = _stem_pairs(
            os.path.join(data_dir, split), os.path.join(data_dir, f"{split}annot")
        )
    elif layout == "folder":
        split_dir = os.path.join(data_dir, split)
        pairs = _stem_pairs(
            os.path.join(split_dir, "images"), os.path.join(split_dir, "masks")
        )
    elif layout == "cache":  # common.cache: training only.
        raise DatasetError(
            f"{data_dir} is a dataset cache, which only training reads; name the "
            "dataset it was written from, e.g. --dataset camvid --data-dir "
            "data/CamVid."
        )
    else:
        raise DatasetError(
            f"Unknown layout {layout!r}: use auto, voc, camvid or folder."
        )
    if not pairs:
        raise DatasetError(f"Split {split!r} of {data_dir!r} has no images.")
    for image_path, mask_path in pairs:
        for path in (image_path, mask_path):
            if not os.path.isfile(path):
                raise DatasetError(
                    f"{path!r} (listed in split {split!r}) does not exist."
                )
    return pairs


def _header_size(path: str) -> tuple[int, int]:
    """`(width, height)` from a file's header; an unreadable file is named."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise DatasetError(
            f"Cannot read {path!r} ({error.__class__.__name__}: it is not an "
            f"image PIL can open): replace it or remove it from the split. "
            f"{VERIFY_HINT}"
        ) from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bands TensorFlow decodes from each PNG colour type (byte 25 of the file):
# grey, RGB, palette (as RGB), grey + alpha, RGBA.
PNG_BANDS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def image_header(path: str) -> tuple[tuple[int, int], ImageFormat]:
    """`(width, height)` and the `ImageFormat` (no statistics) of one image file.

    Read from the header only: a PNG's IHDR (colour type and bit depth), a
    TIFF's tags (tifffile), and for JPEG, BMP and GIF, which TensorFlow
    decodes to three 8-bit bands, PIL's size. An unreadable file is named.
    """
    if path.lower().endswith(TIFF_EXTENSIONS):
        try:
            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                shape, axes, dtype = series.shape, series.axes, series.dtype
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as error:
            raise DatasetError(
                f"Cannot read {path!r} as a TIFF ({error}). {VERIFY_HINT}"
            ) from None
        bands = int(np.prod(shape)) // (height * width)  # The planes that are not Y, X.
        return (width, height), ImageFormat(bands, dtype.name, tiff=True)
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[25] in PNG_BANDS:
        width, height = struct.unpack(">II", head[16:24])
        dtype = "uint16" if head[24] == 16 else "uint8"
        return (width, height), ImageFormat(PNG_BANDS[head[25]], dtype)
    return _header_size(path), RGB


def checked_image_size(image_path: str, image_format: ImageFormat) -> tuple[int, int]:
    """`(width, height)` of an image that must be stored as `image_format` says.

    RGB takes, as ever, every image TensorFlow decodes (a grey PNG becomes
    grey RGB); other formats need the training images' bands, bit depth and
    file kind (TIFF or not) exactly. Else a `DatasetError` names the file.
    """
    size, stored = image_header(image_path)
    if image_format.is_rgb and not image_format.tiff:
        fits = not stored.tiff  # Decoded to three 8-bit bands.
    else:
        fits = (stored.bands, stored.dtype, stored.tiff) == (
            image_format.bands,
            image_format.dtype,
            image_format.tiff,
        )
    if not fits:
        raise DatasetError(
            f"Image {image_path!r} has {stored.storage()} but the training images "
            f"have {image_format.storage()}: every image of a dataset needs the same "
            "bands and bit depth. Convert it, or move it out of the split."
        )
    return size


def image_sizes(
    pairs: Sequence[tuple[str, str]], image_format: ImageFormat | None = None
) -> list[tuple[int, int]]:
    """Read `(height, width)` of every pair from the file headers, checking both agree.

    PIL reads only the header, so this costs about a millisecond a file and
    catches unreadable files and size mismatches before TensorFlow runs.
    Given `image_format`, every image must fit it (`checked_image_size`), or
    the first that does not is named.
    """
    sizes = []
    for image_path, mask_path in pairs:
        if image_format is None:
            image_size, _ = image_header(image_path)
        else:
            image_size = checked_image_size(image_path, image_format)
        mask_size = _header_size(mask_path)
        if image_size != mask_size:
            raise DatasetError(
                f"Mask {mask_path!r} is {mask_size[0]}x{mask_size[1]} but image "
                f"{image_path!r} is {image_size[0]}x{image_size[1]} (width x height)."
            )
        sizes.append((image_size[1], image_size[0]))
    return sizes


def check_mask_values(
    mask_paths: Sequence[str],
    num_classes: int,
    mask_values: str | None = None,
    ignore_index: int = IGNORE_LABEL,
) -> None:
    """Refuse flag combinations and masks whose meaning would be a guess.

    A mask made only of 0 and 255 is either a black-and-white mask (255 = the
    second class) or one class plus void, and its pixels cannot tell which.
    Read as index masks with 255 = void, black-and-white masks train on the
    background alone and score nothing else. So unless `mask_values` says how
    to read them, the first mask with any non-zero pixel is decoded here (one
    file, milliseconds); if it holds only 0 and 255, this raises a
    `DatasetError` naming it and the two flags that settle the question.
    Colour (palette) masks are never ambiguous and are not checked.
    """
    if mask_values not in (None, *MASK_VALUES):
        raise DatasetError(
            f"--mask-values {mask_values!r} is not one of {', '.join(MASK_VALUES)}."
        )
    if mask_values == "binary":
        if num_classes != 2:
            raise DatasetError(
                "--mask-values binary makes two classes (0 -> class 0, 255 -> "
                f"class 1), but --num-classes is {num_classes}: use 2."
            )
        if ignore_index == 0:
            raise DatasetError(
                "--mask-values binary reads 0 as class 0, so --ignore-index cannot "
                "be 0 (use a grey value other than 0 and 255, or leave it at 255 "
                "for no void)."
            )
    if mask_values is not None or ignore_index != IGNORE_LABEL:
        return
    for mask_path in mask_paths:
        values = _grey_values(mask_path)
        if values is None or not values.any():
            continue
        if set(values.tolist()) <= {0, IGNORE_LABEL}:
            raise DatasetError(
                f"Mask {mask_path!r} holds only 0 and 255, and 255 means void by "
                "default, so every non-zero pixel would be ignored. Black-and-white "
                "masks (255 = the second class): pass --mask-values binary "
                "--num-classes 2. If 255 really is void here: --mask-values index."
            )
        return


def _grey_values(mask_path: str) -> np.ndarray | None:
    """The distinct grey values TensorFlow decodes, or None for a colour mask."""
    try:
        decoded = tf.io.decode_png(tf.io.read_file(mask_path), channels=0)
    except tf.errors.InvalidArgumentError:
        raise DatasetError(f"Mask {mask_path!r} is not a readable PNG.") from None
    if decoded.shape[-1] > 2:  # Palette or RGB(A): looked up by colour, exactly.
        return None
    return np.unique(decoded[..., 0].numpy())


# --------------------------------------------------------------------------
# The tf.data pipeline
# --------------------------------------------------------------------------


# Training images whose pixels give each band's mean and standard deviation:
# evenly spaced over the split, so a sorted folder's first scenes do not decide.
STATISTICS_IMAGES = 200


def statistics_sample(image_paths: Sequence[str]) -> list[str]:
    """Up to `STATISTICS_IMAGES` of `image_paths`, evenly spaced, first and last in."""
    count = min(len(image_paths), STATISTICS_IMAGES)
    indices = np.linspace(0, len(image_paths) - 1, count).round().astype(int)
    return [image_paths[index] for index in indices]


def band_statistics(
    image_paths: Sequence[str], image_format: ImageFormat
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each band's mean and standard deviation over the pixels of `image_paths`.

    Decodes every image as the pipeline does (`load_image`). Sums are float64
    and taken around the first image's mean, so that a 16-bit band with a
    small spread does not cancel out. A constant band (an opaque alpha band)
    gets std 1: standardising it just subtracts its mean.
    """
    shift, count = None, 0
    sums = squares = np.zeros(image_format.bands)
    for path in image_paths:
        try:
            image = load_image(path, image_format).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise DatasetError(f"{path}: {tf_error_message(error)}") from None
        except ValueError as error:  # From read_tiff, which names the file.
            raise DatasetError(str(error)) from None
        pixels = image.reshape(-1, image_format.bands).astype(np.float64)
        if shift is None:
            shift = pixels.mean(axis=0)
        pixels -= shift
        sums = sums + pixels.sum(axis=0)
        squares = squares + np.square(pixels).sum(axis=0)
        count += len(pixels)
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0))
    mean += shift
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1), std, 1.0)
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def detect_image_format(
    image_paths: Sequence[str], input_channels: int | None = None
) -> ImageFormat:
    """The training images' format, from the first of them, with band statistics.

    `input_channels` (--input-channels), if given, must be the first image's
    band count. Unless the images are RGB, each band's mean and standard
    deviation over `statistics_sample(image_paths)` are measured; those
    images' headers are checked first, so that one stored otherwise is named.
    """
    first = image_paths[0]
    _, image_format = image_header(first)
    if input_channels is not None and input_channels != image_format.bands:
        raise DatasetError(
            f"--input-channels {input_channels}, but the training images have "
            f"{image_format.storage()} ({first!r}): drop --input-channels to train "
            f"on the bands the images hold, or convert the images."
        )
    if image_format.is_rgb:
        return image_format
    sample = statistics_sample(image_paths)
    for path in sample:
        checked_image_size(path, image_format)
    band_mean, band_std = band_statistics(sample, image_format)
    return replace(image_format, band_mean=band_mean, band_std=band_std)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """`(height, width)` of an image of `size` resized by `scale` (`--image-scale`).

    Rounded to the nearest pixel, at least one, exactly as `resize_pair` does
    it in the graph, so that padding and pictures line up with the pixels.
    """
    return tuple(max(1, round(side * scale)) for side in size)


def resize_pair(
    image: tf.Tensor, mask: tf.Tensor, scale: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize one example by `scale`: the image bilinear, the mask nearest.

    The image is antialiased (a plain bilinear downscale skips pixels and
    aliases thin poles and wires); the mask takes the nearest label, so it
    never holds a class that is not in the original. Returns float32
    `(h, w, bands)` and uint8 `(h, w)`.
    """
    size = tf.cast(tf.round(tf.cast(tf.shape(mask), tf.float64) * scale), tf.int32)
    size = tf.maximum(size, 1)
    image = tf.image.resize(
        tf.cast(image, tf.float32), size, method="bilinear", antialias=True
    )
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def round_up(size: int, multiple: int = 32) -> int:
    """Smallest multiple of `multiple` that is >= `size`."""
    return -(-size // multiple) * multiple


def make_dataset(
    data_dir: str,
    split: str,
    batch_size: int,
    crop_size: int,
    training: bool,
    *,
    layout: str = "auto",
    num_classes: int = len(VOC_CLASSES),
    ignore_index: int = IGNORE_LABEL,
    scale_range: tuple[float, float] = (0.5, 2.0),
    input_size_rule: Callable[[int], int] = round_up,
    label_margin: int = 0,
    class_weights: Sequence[float] | None = None,
    mask_values: str | None = None,
    max_images: int | None = None,
    cache: bool = False,
    seed: int = 0,
    image_format: ImageFormat = RGB,
    image_scale: float = 1.0,
) -> tf.data.Dataset:
    """Return a dataset of `(images, masks)` or `(images, masks, pixel_weights)`.

    images: float32 `(B, H, W, 3)`, RGB in [0, 255]; for another
    `image_format`, float32 `(B, H, W, bands)` with the stored values, every
    file checked to be stored alike. masks: int32 `(B, h, w)`, class indices
    with 255 = void kept (the loss and metrics ignore it).

    Training (`training=True`): shuffled with `seed`, repeated forever (pass
    `steps_per_epoch` to `fit`), and each example goes through the joint
    random scale / pad / crop / flip of `common.augment` to `crop_size`
    (DeepLab's recipe). Batches are full (`drop_remainder`) because a batch of
    one breaks batch norm.

    Evaluation (`training=False`): every pixel of every image is scored at its
    original resolution. All images are padded at the bottom and right to one
    fixed size (the largest image of the split, rounded up by
    `input_size_rule` to a size the network takes), the image with the
    dataset mean (`image_format.pad_value`) and the mask with 255, so the
    padding is never scored and one compiled graph serves the whole split.

    `label_margin` is for networks whose output is smaller than their input
    (U-Net with valid convolutions): masks are centre-cropped by that many
    pixels per side in training, and in evaluation the image is mirrored
    outwards by the margin (the paper's overlap-tile strategy, Fig. 2) so that
    the output still covers every pixel. `class_weights` adds a third element,
    one weight per pixel (0 on void), for class-balanced losses. `mask_values`
    says how grey mask values map to classes (see `check_mask_values`).

    `image_scale` resizes every image and mask by that factor as it is loaded
    (`resize_pair`), before the augmentation or the evaluation padding: the
    whole run then sees, say, CamVid's 360x480 at 180x240, four times fewer
    pixels a step. Its scores are on the resized masks; `evaluate.py` scores
    such a model on the full-size masks.
    """
    pairs = list_pairs(data_dir, split, layout)[:max_images]
    sizes = [
        scaled_size(size, image_scale) for size in image_sizes(pairs, image_format)
    ]
    pad_value = image_format.pad_value
    image_paths, mask_paths = (list(column) for column in zip(*pairs))
    check_mask_values(mask_paths, num_classes, mask_values, ignore_index)
    files = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))

    def load(image_path, mask_path):
        image, mask = load_pair(
            image_path, mask_path, num_classes, ignore_index, mask_values, image_format
        )
        return (
            (image, mask) if image_scale == 1 else resize_pair(image, mask, image_scale)
        )

    if training:
        check_crop_size(crop_size, input_size_rule)
        dataset = _training_examples(files, load, cache, seed)
        dataset = dataset.map(
            lambda example, seeds: _augment(
                *example, seeds, crop_size, scale_range, label_margin, pad_value
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = files.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        if cache:
            dataset = dataset.cache()
        input_size = _eval_input_size(sizes, input_size_rule, label_margin)
        dataset = dataset.map(
            lambda image, mask: _pad_for_evaluation(
                image, mask, input_size, label_margin, pad_value
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if class_weights is not None:
        dataset = dataset.map(
            _add_pixel_weights(class_weights), num_parallel_calls=tf.data.AUTOTUNE
        )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)


def remove_padding(
    arrays: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], margin: int = 0
) -> list[np.ndarray]:
    """Undo the evaluation padding: each array's original `(h, w)` pixels again.

    Evaluation batches pad every image at the bottom and right (and, for a
    network with a `label_margin`, mirror it outwards by that margin first), so
    a picture of an image, its mask or its prediction crops them back.
    `sizes` are the images' own sizes, as `image_sizes` returns them.
    """
    return [
        array[margin : margin + height, margin : margin + width]
        for array, (height, width) in zip(arrays, sizes)
    ]


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image of any bands as uint8 RGB `(h, w, 3)`, for pictures only.

    One or two bands show the first as grey; more show the first three as
    R, G and B. Values in [0, 255] (8-bit images) are shown as they are;
    others (16-bit, float) are stretched band by band from their 1st to 99th
    percentile to 0..255.
    """
    image = np.asarray(image)
    image = image[..., [0, 0, 0]] if image.shape[-1] < 3 else image[..., :3]
    if image.size and 0 <= image.min() and image.max() <= 255:
        return image.astype(np.uint8)
    low, high = np.percentile(image.reshape(-1, 3), [1, 99], axis=0)
    stretched = (image - low) / np.maximum(high - low, 1e-12) * 255
    return np.clip(stretched, 0, 255).astype(np.uint8)


def check_crop_size(crop_size: int, input_size_rule: Callable[[int], int]) -> None:
    """Refuse a training crop the network cannot take, naming the sizes around it.

    `input_size_rule(size)` is the smallest size >= `size` that the network
    takes (each training script defines its own `input_size_rule`).
    """
    above = input_size_rule(crop_size)
    if above == crop_size:
        return
    below = next(
        (size for size in range(crop_size - 1, 0, -1) if input_size_rule(size) == size),
        None,
    )
    nearest = f"{below} or {above}" if below else f"{above}"
    raise DatasetError(
        f"--crop-size {crop_size}: this network cannot take {crop_size} pixels; "
        f"the nearest sizes it takes are {nearest}"
    )


def _augment(image, mask, seeds, crop_size, scale_range, label_margin, pad_value):
    """`augment.random_scale_crop_flip` for one example, drawn from its `seeds`.

    The stateless draws make a run repeatable with `--seed` even with parallel
    map calls. Returns float32 `(crop, crop, bands)` and int32 masks, centre-
    cropped by `label_margin` for a network whose output is that much smaller.
    """
    draws = tf.random.stateless_uniform([1, augment.DRAWS], seeds)
    images, masks = augment.random_scale_crop_flip(
        image[None],
        mask[None],
        tf.unstack(tf.shape(mask)),
        draws,
        crop_size,
        scale_range,
        pad_value,
        tf.experimental.numpy,
    )
    return images[0], augment.center_crop(masks[0], label_margin)


def _pad_for_evaluation(image, mask, input_size, label_margin, pad_value):
    """`augment.pad_for_evaluation` for one example, its static shape restored."""
    image, mask = augment.pad_for_evaluation(
        image,
        mask,
        tf.unstack(tf.shape(mask)),
        input_size,
        tf.experimental.numpy,
        label_margin,
        pad_value,
    )
    height, width = input_size
    margin = 2 * label_margin
    image = tf.ensure_shape(image, (height, width, len(pad_value)))
    return image, tf.ensure_shape(mask, (height - margin, width - margin))


def _training_examples(files, load, cache: bool, seed: int) -> tf.data.Dataset:
    """Decoded, shuffled, endless examples, each zipped with its own random seed.

    Per-example seeds from `Dataset.random` drive stateless random ops, so the
    augmentation is repeatable with `--seed` even with parallel map calls.
    """
    count = int(files.cardinality())
    if cache:  # Decode once, keep in memory, then shuffle the decoded examples.
        examples = files.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
        examples = examples.shuffle(count, seed=seed).repeat()
    else:  # Shuffle the file names (cheap), then decode.
        examples = files.shuffle(count, seed=seed).repeat()
        examples = examples.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return tf.data.Dataset.zip((examples, seeds))


def _eval_input_size(
    sizes: Sequence[tuple[int, int]],
    input_size_rule: Callable[[int], int],
    label_margin: int,
) -> tuple[int, int]:
    smallest = min(min(size) for size in sizes)
    if label_margin and smallest <= label_margin:
        raise DatasetError(
            f"An image of this split is only {smallest} px on one side; mirroring "
            f"it by the network's {label_margin}-px margin needs more than that."
        )
    max_height = max(height for height, _ in sizes)
    max_width = max(width for _, width in sizes)
    return (
        input_size_rule(max_height + 2 * label_margin),
        input_size_rule(max_width + 2 * label_margin),
    )


def _add_pixel_weights(class_weights: Sequence[float]):
    """Map `(image, mask)` to `(image, mask, weights)`: weight of each pixel's class."""
    table = np.zeros(256, np.float32)  # Void (255) and unused values weigh 0.
    table[: len(class_weights)] = class_weights
    table = tf.constant(table)

    def add(image, mask):
        return image, mask, tf.gather(table, mask)

    return add


# --------------------------------------------------------------------------
# Whole-dataset checks and statistics
# --------------------------------------------------------------------------


def class_pixel_counts(
    pairs: Sequence[tuple[str, str]],
    num_classes: int,
    ignore_index: int = IGNORE_LABEL,
    mask_values: str | None = None,
    image_format: ImageFormat = RGB,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every mask of `pairs` (checking it) and count pixels per class.

    Returns two int64 `(num_classes,)` arrays: the pixels of each class, and the
    non-void pixels of the images in which that class occurs (the denominator
    of SegNet's median-frequency balancing). Void is never counted. Errors name
    the file, as in training; pass the `mask_values` and `image_format` the
    pipeline reads with.
    """
    check_mask_values(
        [mask for _, mask in pairs], num_classes, mask_values, ignore_index
    )

    def decoded_masks() -> Iterator[np.ndarray]:  # One at a time: VOC is large.
        for image_path, mask_path in pairs:
            try:
                _, mask = load_pair(
                    image_path,
                    mask_path,
                    num_classes,
                    ignore_index,
                    mask_values,
                    image_format,
                )
            except tf.errors.InvalidArgumentError as error:
                raise DatasetError(
                    f"{image_path} / {mask_path}: {tf_error_message(error)}"
                ) from None
            except ValueError as error:  # From read_tiff, which names the file.
                raise DatasetError(str(error)) from None
            yield mask.numpy()

    return count_class_pixels(decoded_masks(), num_classes)


def count_class_pixels(
    masks: Iterable[np.ndarray], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """`class_pixel_counts` of decoded masks (void 255): the two int64 arrays."""
    counts = np.zeros(num_classes, np.int64)
    present_pixels = np.zeros(num_classes, np.int64)
    for mask in masks:
        values = np.asarray(mask).ravel()
        values = values[values != IGNORE_LABEL]
        image_counts = np.bincount(values, minlength=num_classes)[:num_classes]
        counts += image_counts
        present_pixels += (image_counts > 0) * values.size
    return counts, present_pixels


def tf_error_message(error: tf.errors.OpError) -> str:
    """The part of a TensorFlow error that our own checks wrote."""
    message = error.message
    marker = "assertion failed:"
    if marker in message:
        message = message.split(marker, 1)[1]
    python_error = "ValueError: "  # Raised by read_tiff in tf.numpy_function.
    if python_error in message:
        return message.split(python_error, 1)[1].split("\n", 1)[0]
    return " ".join(message.replace("[", " ").replace("]", " ").split())


def verify(
    data_dir: str,
    split: str,
    num_classes: int,
    class_names: Sequence[str],
    layout: str = "auto",
    ignore_index: int = IGNORE_LABEL,
    mask_values: str | None = None,
) -> np.ndarray:
    """Check every file of a split and print class pixel frequencies.

    Every image must be stored as the split's first (bands, bit depth).
    """
    pairs = list_pairs(data_dir, split, layout)
    _, image_format = image_header(pairs[0][0])
    image_sizes(pairs, image_format)
    counts, _ = class_pixel_counts(
        pairs, num_classes, ignore_index, mask_values, image_format
    )
    total = max(int(counts.sum()), 1)
    print(
        f"{split}: {len(pairs)} images ({image_format.storage()}), all readable, "
        "sizes and labels valid."
    )
    print(f"{'class':<16}{'pixels':>14}{'share':>9}")
    for name, count in zip(class_names, counts):
        print(f"{name:<16}{count:>14,}{count / total:>9.2%}")
    return counts
