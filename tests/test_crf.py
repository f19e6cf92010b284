"""The dense CRF: mean-field properties on tiny arrays, and its gain on real images."""

import sys

import numpy as np
import pytest

from common import crf, voc
from common.errors import InputError
from common.metrics import ConfusionMatrix, mean_iou, trimap_mask

pytest.importorskip("pydensecrf.densecrf", reason="pip install -r requirements-crf.txt")

HEIGHT, WIDTH, EDGE = 24, 32, 16


def two_tone_image(left=0, right=255):
    image = np.full((HEIGHT, WIDTH, 3), left, np.uint8)
    image[:, EDGE:] = right
    return image


def blurred_two_class_probabilities(crossing=12):
    """Class 1 grows from 0.1 to 0.9 across the image; 0.5 at column `crossing`,
    4 pixels left of the image's edge: a boundary an upsampled network misplaced."""
    columns = np.arange(WIDTH)
    class_1 = np.clip((columns - crossing + 6) / 12, 0.1, 0.9)
    row = np.stack([1 - class_1, class_1], axis=-1)
    return np.repeat(row[None], HEIGHT, axis=0).astype(np.float32)


def test_output_is_probabilities_of_the_input_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    probabilities = rng.dirichlet(np.ones(5), size=(HEIGHT, WIDTH))

    refined = crf.dense_crf(image, probabilities, iterations=3)

    assert refined.shape == (HEIGHT, WIDTH, 5) and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(refined >= 0)


def test_uniform_unaries_stay_uniform():
    probabilities = np.full((HEIGHT, WIDTH, 3), 1 / 3, np.float32)
    refined = crf.dense_crf(two_tone_image(), probabilities)
    np.testing.assert_allclose(refined, 1 / 3, atol=1e-6)


def test_smoothness_kernel_alone_does_not_flip_confident_pixels():
    # 8 x 8 blocks of alternating classes, 95 % sure: the Gaussian kernel
    # (sigma 3) must not overrule them, and must not swap them either (which a
    # unary with the wrong sign would do).
    rows, columns = np.indices((HEIGHT, WIDTH))
    labels = (rows // 8 + columns // 8) % 2
    probabilities = np.where(np.eye(2, dtype=bool)[labels], 0.95, 0.05)

    refined = crf.dense_crf(
        two_tone_image(128, 128), probabilities, bilateral_weight=0.0
    )

    np.testing.assert_array_equal(np.argmax(refined, axis=-1), labels)


def test_an_image_edge_stops_labels_bleeding_across_it():
    probabilities = blurred_two_class_probabilities()
    at_the_edge = np.repeat((np.arange(WIDTH) >= EDGE)[None], HEIGHT, axis=0)
    assert not np.array_equal(np.argmax(probabilities, -1), at_the_edge)

    snapped = crf.dense_crf(two_tone_image(), probabilities)
    # The same CRF on a flat image has no edge to stop at: it only smooths.
    smoothed = crf.dense_crf(two_tone_image(128, 128), probabilities)

    np.testing.assert_array_equal(np.argmax(snapped, -1), at_the_edge)
    assert not np.array_equal(np.argmax(smoothed, -1), at_the_edge)


def test_mismatched_sizes_and_dtypes_are_clear_errors():
    probabilities = np.full((HEIGHT, WIDTH, 2), 0.5, np.float32)
    with pytest.raises(ValueError, match="do not match the image"):
        crf.dense_crf(two_tone_image()[:-1], probabilities)
    with pytest.raises(ValueError, match="uint8"):
        crf.dense_crf(two_tone_image().astype(np.float32), probabilities)


def test_missing_package_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(InputError, match=r"pip install -r requirements-crf\.txt"):
        crf.dense_crf(two_tone_image(), blurred_two_class_probabilities())


def test_crf_sharpens_boundaries_on_real_voc_images(voc_sample_dir):
    """Simulated output-stride-8 predictions for 6 real VOC images (boundaries
    misplaced by a few pixels). With DeepLab's settings the CRF must raise mean
    IoU, and raise it more within 8 pixels of a boundary (the trimap) than over
    the whole image. `bench/crf.py` reports the same on all 40 pairs."""
    pairs = voc.list_pairs(voc_sample_dir, "val", "voc")[:6]
    rng = np.random.default_rng(0)
    scores = {
        (method, band): ConfusionMatrix(21)
        for method in ("network", "crf")
        for band in ("all", "trimap")
    }
    for image_path, mask_path in pairs:
        image, mask = (t.numpy() for t in voc.load_pair(image_path, mask_path, 21))
        probabilities = crf.simulated_stride8_probabilities(mask, 21, rng)
        outputs = {"network": probabilities, "crf": crf.dense_crf(image, probabilities)}
        scored = {"all": mask, "trimap": trimap_mask(mask, 8)}
        for (method, band), metric in scores.items():
            metric.update_state(scored[band][None], outputs[method][None])

    gain = {
        band: mean_iou(scores["crf", band].matrix)
        - mean_iou(scores["network", band].matrix)
        for band in ("all", "trimap")
    }
    assert gain["all"] > 0.005, gain
    assert gain["trimap"] > 1.5 * gain["all"], gain
