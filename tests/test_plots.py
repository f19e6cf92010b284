"""Figures of masks: legends name exactly the classes shown, one column per model."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from common.plots import COLORMAP, colorize, compare_predictions, legend_handles
from common.shapes import SHAPES_CLASSES


def test_legend_names_present_classes_and_void_in_their_colours():
    masks = [np.array([[0, 2], [255, 2]]), np.array([[5, 0]])]
    handles = legend_handles(masks, SHAPES_CLASSES)
    assert [h.get_label() for h in handles] == [
        "background",
        "square",
        "cross",
        "void (ignored)",
    ]
    np.testing.assert_allclose(handles[1].get_facecolor()[:3], COLORMAP[2] / 255)
    np.testing.assert_array_equal(colorize(masks[0])[1, 0], COLORMAP[255])


def test_compare_predictions_has_a_column_per_model_and_one_legend():
    images = [np.zeros((4, 5, 3), np.uint8)] * 2
    masks = [np.zeros((4, 5), np.uint8)] * 2
    predictions = {"FCN-32s": [np.ones((4, 5), np.uint8)] * 2, "FCN-8s": masks}
    figure = compare_predictions(images, masks, predictions, SHAPES_CLASSES, "t")
    axes = figure.axes
    assert len(axes) == 2 * 4
    assert [axis.get_title() for axis in axes[:4]] == [
        "image",
        "ground truth",
        "FCN-32s",
        "FCN-8s",
    ]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["background", "circle"]
    plt.close(figure)
