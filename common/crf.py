"""Fully connected CRF post-processing, as in DeepLab v1 and v2.

A network with output stride 8 predicts a blurry map at object boundaries: its
bilinearly upsampled softmax cannot follow an edge finer than 8 pixels. DeepLab
(v1 Sec. 3.2, v2 Sec. 3.3) refines it with the fully connected CRF of Krähenbühl
& Koltun ("Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials", NIPS 2011): every pixel is linked to every other one, with an energy

    E(x) = sum_i -log P(x_i)
         + sum_{i<j} [x_i != x_j] * (
               w1 * exp(-|p_i - p_j|^2 / 2 sa^2 - |I_i - I_j|^2 / 2 sb^2)
             + w2 * exp(-|p_i - p_j|^2 / 2 sg^2))

where P is the network's softmax, p a pixel's position and I its RGB colour. The
first (bilateral, "appearance") kernel asks pixels that are near *and* of similar
colour to share a label, so labels snap to the image's edges; the second
(Gaussian, "smoothness") kernel only removes small isolated regions. `[x_i != x_j]`
is the Potts compatibility. Mean-field inference approximates the posterior; the
permutohedral lattice makes one iteration linear in the number of pixels.

`dense_crf` runs Krähenbühl's own C++ code through `pydensecrf2` (an optional
extra: `pip install -r requirements-crf.txt`, which compiles it). Defaults are the
settings DeepLab released for VOC 2012 (see `DEEPLAB_VOC`).
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.ndimage

from common.backend import tf
from common.errors import InputError

# DeepLab's dense-CRF settings for PASCAL VOC 2012. The papers fix w2 = 3, sg = 3
# and 10 mean-field iterations, and cross-validate w1, sa and sb on 100 val images
# (v1 Sec. 4.1; v2 Sec. 4.1, "we fix the number of mean field iterations to 10").
# The values below are those of the released DeepLab-LargeFOV (VGG-16) model, in
# the authors' `deeplab-public` scripts (model `vgg128_noup_pool3_20M_largewin3`:
# bi_w 4, bi_x_std 121, bi_r_std 5, pos_w 3, pos_x_std 3). Their ResNet-101 v2
# model was tuned to bi_w 4, bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1
# (e.g. kazuto1011/deeplab-pytorch configs/voc12.yaml): cross-validate for yours.
DEEPLAB_VOC = {
    "iterations": 10,
    "bilateral_weight": 4.0,  # w1
    "bilateral_xy_std": 121.0,  # sa, pixels
    "bilateral_rgb_std": 5.0,  # sb, colour levels (0-255)
    "gaussian_weight": 3.0,  # w2
    "gaussian_xy_std": 3.0,  # sg, pixels
}
INSTALL_HINT = "pip install -r requirements-crf.txt"
# -log(0) is infinite: a pixel the network rules out entirely keeps a large but
# finite cost, so the CRF can still overrule it (pydensecrf's own default clip).
MIN_PROBABILITY = 1e-5


# A trained network is confident inside objects: with this logit gap, a pixel
# far from any boundary gets about 0.99 for its class out of 21.
LOGIT_SCALE = 8.0
# ... and the boundaries it misplaces wander over about this many pixels.
SHIFT_SPACING = 32


class CrfUnavailableError(InputError):
    """`--crf` was asked for but pydensecrf2 is not installed."""


def require_pydensecrf():
    """Import pydensecrf's C++ module, or stop with one line saying how to get it."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError:
        raise CrfUnavailableError(
            f"--crf needs the optional package pydensecrf2: {INSTALL_HINT} "
            "(it compiles C++ code, so it needs a C++ compiler such as g++)."
        ) from None
    return densecrf


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = DEEPLAB_VOC["iterations"],
    bilateral_weight: float = DEEPLAB_VOC["bilateral_weight"],
    bilateral_xy_std: float = DEEPLAB_VOC["bilateral_xy_std"],
    bilateral_rgb_std: float = DEEPLAB_VOC["bilateral_rgb_std"],
    gaussian_weight: float = DEEPLAB_VOC["gaussian_weight"],
    gaussian_xy_std: float = DEEPLAB_VOC["gaussian_xy_std"],
) -> np.ndarray:
    """Refine a softmax with the fully connected CRF; return the new marginals.

    Args:
        image: uint8 `(H, W, 3)` RGB, the picture the network saw, unpadded.
        probabilities: `(H, W, C)` softmax of the network at the image's size
            (after any test-time augmentation); its -log is the unary energy.
        iterations: mean-field iterations.
        bilateral_weight, bilateral_xy_std, bilateral_rgb_std: w1, sa, sb of the
            appearance kernel (positions in pixels, colours in 0-255 levels).
        gaussian_weight, gaussian_xy_std: w2, sg of the smoothness kernel.

    Returns:
        float32 `(H, W, C)` approximate posterior marginals; each pixel sums to 1.
    """
    densecrf = require_pydensecrf()
    image, probabilities = _checked_inputs(image, probabilities)
    height, width, num_classes = probabilities.shape
    # pydensecrf wants class-major, C-contiguous float32: (C, H * W).
    unary = -np.log(np.clip(probabilities, MIN_PROBABILITY, 1.0))
    unary = np.ascontiguousarray(unary.reshape(-1, num_classes).T, np.float32)

    crf = densecrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(unary)
    # compat=w is the Potts model: a cost w where the two labels differ.
    crf.addPairwiseGaussian(sxy=gaussian_xy_std, compat=gaussian_weight)
    crf.addPairwiseBilateral(
        sxy=bilateral_xy_std,
        srgb=bilateral_rgb_std,
        rgbim=np.ascontiguousarray(image),
        compat=bilateral_weight,
    )
    marginals = np.asarray(crf.inference(iterations), np.float32)  # (C, H * W)
    return marginals.T.reshape(height, width, num_classes)


def _checked_inputs(image, probabilities) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    probabilities = np.asarray(probabilities, np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"dense_crf needs a uint8 (H, W, 3) RGB image, got {image.dtype} "
            f"{image.shape}: convert with np.clip(image, 0, 255).astype(np.uint8)."
        )
    if probabilities.ndim != 3 or probabilities.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"dense_crf: probabilities {probabilities.shape} do not match the image "
            f"{image.shape[:2]}: resize the softmax to the image's size first."
        )
    return image, probabilities


def add_crf_args(parser: argparse.ArgumentParser) -> None:
    """`--crf` and its parameters (evaluate.py, predict.py), DeepLab's by default."""
    group = parser.add_argument_group(
        "dense CRF (DeepLab v1/v2 post-processing; needs " + INSTALL_HINT + ")"
    )
    group.add_argument(
        "--crf",
        action="store_true",
        help="refine the softmax with the fully connected CRF (after --scales/--flip)",
    )
    flags = {
        "iterations": (int, "mean-field iterations"),
        "bilateral_weight": (float, "w1, weight of the appearance kernel"),
        "bilateral_xy_std": (float, "theta_alpha, its position std in pixels"),
        "bilateral_rgb_std": (float, "theta_beta, its colour std (0-255 levels)"),
        "gaussian_weight": (float, "w2, weight of the smoothness kernel"),
        "gaussian_xy_std": (float, "theta_gamma, its position std in pixels"),
    }
    for name, (kind, text) in flags.items():
        group.add_argument(
            "--crf-" + name.replace("_", "-"),
            type=kind,
            default=DEEPLAB_VOC[name],
            help=f"{text} (default: %(default)s)",
        )


def crf_settings(args: argparse.Namespace) -> dict:
    """The `dense_crf` keyword arguments given by the `--crf-*` flags."""
    settings = {name: getattr(args, "crf_" + name) for name in DEEPLAB_VOC}
    if settings["iterations"] < 1 or min(settings.values()) < 0:
        raise InputError(
            "--crf-iterations must be at least 1 and the --crf-* weights and "
            "standard deviations must not be negative."
        )
    return settings


def simulated_stride8_probabilities(
    mask: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    noise: float = 1.0,
    boundary_shift: float = 8.0,
    output_stride: int = 8,
) -> np.ndarray:
    """What a decent output-stride-8 network might predict for a labelled image.

    A stride-8 network errs at boundaries: it places them only to within a few
    pixels, loses thin parts and rounds corners (DeepLab v1 Sec. 3.2). So the
    ground truth is first displaced by a smooth random field (each boundary
    moves by about `boundary_shift` pixels, the direction varying over tens of
    pixels), then averaged over `output_stride` x `output_stride` cells (the
    network's resolution), turned into noisy logits and bilinearly upsampled
    back, as DeepLab upsamples its logits. Void pixels (255), the band along
    object borders, first take the label of the nearest labelled pixel, as a
    network predicts some class there; score them as void.

    Returns:
        float32 `(H, W, num_classes)` probabilities; each pixel sums to 1.
    """
    height, width = mask.shape
    labels = _displaced(_void_filled(mask, num_classes), rng, boundary_shift)
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    # Average each 8 x 8 cell (the edge repeated to fill the last ones), like a
    # stride-8 network's output centred on it: (H/8, W/8, C).
    cells = -(-height // output_stride), -(-width // output_stride)
    padding = cells[0] * output_stride - height, cells[1] * output_stride - width
    one_hot = np.pad(one_hot, ((0, padding[0]), (0, padding[1]), (0, 0)), "edge")
    coarse = one_hot.reshape(
        cells[0], output_stride, cells[1], output_stride, num_classes
    ).mean(axis=(1, 3))
    logits = LOGIT_SCALE * coarse + noise * rng.standard_normal(coarse.shape)
    logits = tf.image.resize(logits, (height, width), method="bilinear")
    return tf.nn.softmax(logits).numpy()


def _void_filled(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """`mask` with every void pixel set to the nearest labelled pixel's class."""
    void = mask >= num_classes
    if void.all():
        return np.zeros_like(mask)
    rows, columns = scipy.ndimage.distance_transform_edt(
        void, return_distances=False, return_indices=True
    )
    return mask[rows, columns]


def _displaced(
    labels: np.ndarray, rng: np.random.Generator, shift: float
) -> np.ndarray:
    """`labels` resampled through a smooth random displacement field.

    One random offset (standard deviation `shift` pixels, per axis) every
    `SHIFT_SPACING` pixels, interpolated bicubically in between: boundaries move
    by a few pixels, differently along their length; interiors stay put.
    """
    height, width = labels.shape
    knots = rng.standard_normal(
        (height // SHIFT_SPACING + 2, width // SHIFT_SPACING + 2, 2)
    )
    field = tf.image.resize(shift * knots, (height, width), method="bicubic").numpy()
    rows, columns = np.indices((height, width))
    rows = np.clip(np.rint(rows + field[..., 0]), 0, height - 1).astype(int)
    columns = np.clip(np.rint(columns + field[..., 1]), 0, width - 1).astype(int)
    return labels[rows, columns]
