"""The legend of a mask figure names exactly the classes the figure shows."""

from __future__ import annotations

import numpy as np

from common.plots import COLORMAP, colorize, legend_handles
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
