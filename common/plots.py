"""Pictures a person would rather look at than read: curves and prediction grids.

A run's prediction grid is chosen to show what the model gets wrong as well as
right (`choose_examples`), not the first images of the split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Files only: works on servers and CI without a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from common.constants import IGNORE_LABEL  # noqa: E402
from common.voc import VOID_COLOR, voc_colormap  # noqa: E402

COLORMAP = voc_colormap()  # 256 colours: VOC's 21 first, index 255 = void.


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-index mask `(H, W)` -> VOC colours `(H, W, 3)` uint8; void is cream."""
    return COLORMAP[np.asarray(mask, np.uint8)]


def legend_handles(
    masks: Sequence[np.ndarray], class_names: Sequence[str]
) -> list[Patch]:
    """One legend patch per class that occurs in `masks`, in the colours of `colorize`.

    For `figure.legend(handles=...)`: a figure of colourised masks names every
    class it shows, and void (255) as "void (ignored)".
    """
    shown = np.unique(np.concatenate([np.ravel(mask) for mask in masks]))
    handles = [
        Patch(color=COLORMAP[index] / 255, label=class_names[index])
        for index in shown
        if index < len(class_names)
    ]
    if IGNORE_LABEL in shown:
        handles.append(Patch(color=np.array(VOID_COLOR) / 255, label="void (ignored)"))
    return handles


def plot_history(csv_path: str, out_path: str) -> None:
    """Loss and mean IoU per epoch, train vs validation, from Keras' CSVLogger file."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, title in (
        (axes[0], "loss", "Loss (void ignored)"),
        (axes[1], "mean_iou", "Mean IoU"),
    ):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in rows[0]:
                axis.plot(
                    epochs,
                    [float(row[prefix + key]) for row in rows],
                    marker="o",
                    label=label,
                )
        axis.set(title=title, xlabel="epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def choose_examples(
    masks: Sequence[np.ndarray], ious: Sequence[float], count: int
) -> list[int]:
    """Indices of `count` examples to picture: every class shown, then the worst.

    First a greedy cover of the classes in `masks` (void aside): repeatedly the
    image with the most classes not yet shown (the first such, in dataset
    order), until all are shown or `count` are taken. Then the lowest mean
    IoU first (NaN, an all-void image, last). The first images of a split
    would flatter a run: its rare classes and failures can lie further down.
    """
    unshown = [set(np.unique(mask).tolist()) - {IGNORE_LABEL} for mask in masks]
    chosen: list[int] = []
    while len(chosen) < count:
        gains = [len(classes) for classes in unshown]
        best = int(np.argmax(gains))
        if gains[best] == 0:
            break
        chosen.append(best)
        unshown = [classes - unshown[best] for classes in unshown]
    worst_first = np.argsort(np.nan_to_num(ious, nan=np.inf), kind="stable")
    chosen += [int(i) for i in worst_first if i not in chosen]
    return chosen[:count]


def compare_predictions(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    predictions: dict[str, Sequence[np.ndarray]],
    class_names: Sequence[str],
    title: str = "",
    row_titles: Sequence[str] | None = None,
) -> plt.Figure:
    """A grid: image | ground truth | one column per model, one row per example.

    images: uint8 or [0, 255] float `(H, W, 3)`; masks and every model's
    predictions: class indices `(H, W)`, one per image. `predictions` maps a
    column title (e.g. "FCN-8s") to that model's predictions. `row_titles`
    (e.g. each image's IoU) are written left of their rows. The legend names
    every class that appears in the grid. Returns the figure (notebooks show it).
    """
    rows, columns = len(images), 2 + len(predictions)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False
    )
    names = ("image", "ground truth", *predictions)
    for row, (image, mask) in enumerate(zip(images, masks)):
        panels = (
            np.clip(image, 0, 255).astype(np.uint8),
            colorize(mask),
            *(colorize(column[row]) for column in predictions.values()),
        )
        for axis, panel, name in zip(axes[row], panels, names):
            axis.imshow(panel, interpolation="nearest")
            # No ticks or frame, but unlike set_axis_off() the row title stays.
            axis.set(xticks=[], yticks=[])
            axis.spines[:].set_visible(False)
            if row == 0:
                axis.set_title(name)
        if row_titles is not None:
            axes[row][0].set_ylabel(row_titles[row], fontsize=11)
    shown = [*masks, *(p for column in predictions.values() for p in column)]
    handles = legend_handles(shown, class_names)
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False
    )
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    return figure


def plot_predictions(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    class_names: Sequence[str],
    out_path: str,
    title: str = "",
    row_titles: Sequence[str] | None = None,
) -> None:
    """Save image | ground truth | prediction, one row per example, to `out_path`.

    images: uint8 or [0, 255] float `(H, W, 3)`; masks and predictions: class
    indices `(H, W)`. `row_titles` go left of their rows (e.g. "IoU 0.83").
    The legend names every class that appears in the grid.
    """
    figure = compare_predictions(
        images, masks, {"prediction": predictions}, class_names, title, row_titles
    )
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], out_path: str, title: str = ""
) -> None:
    """Row-normalised confusion matrix: row = true class, each row sums to 1.

    The diagonal is per-class recall; a bright first column means objects are
    being swallowed by the background.
    """
    matrix = np.asarray(matrix, np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.42 * len(class_names))
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=90)
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
