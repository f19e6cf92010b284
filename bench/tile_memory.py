"""Time and peak memory of tiled inference on large images, against whole images.

    python bench/tile_memory.py                  # the default cases, ~4 min on 2 cores
    python bench/tile_memory.py --filters 16 32 64 128 --tile 256

Segments synthetic images of 1500 x 1000, 3000 x 2000 and 6000 x 4000 pixels
(width x height) with a randomly initialised U-Net (`unet_train.build_unet`,
small `--filters`, 21 classes): whole (`common.inference.predict_probabilities`,
what predict.py does without `--tile`) and in `--tile` windows, to labels band
by band (`predict_tiled_labels`, predict.py's `--tile`) or to the whole
image's softmax (`predict_tiled`, which `--scales`, `--flip`, `--crf` and
evaluate.py need). Each case runs in a fresh process, so its peak resident
memory is its own; "floor" is that process's peak after building the model and
predicting one batch of windows, before the image exists, so "peak - floor" is
what the image costs. The whole softmax of a 6000 x 4000 image is 2 GB
(H x W x 21 float32); labels band by band keep one window-tall band of sums,
`tile x W x 21` float32 (258 MB at 512 x 6000), whatever the height.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench.harness import (  # noqa: E402
    NUM_CLASSES,
    device_name,
    in_fresh_process,
    peak_memory_mb,
)
from common import inference  # noqa: E402
from unet_train import build_unet  # noqa: E402

# (width, height, output): "whole" softmax, tiled "labels", tiled "probabilities".
CASES = [
    (1500, 1000, "whole"),
    (3000, 2000, "whole"),
    (1500, 1000, "labels"),
    (3000, 2000, "labels"),
    (6000, 4000, "labels"),
    (6000, 4000, "probabilities"),
]


def measure(width: int, height: int, output: str, args: argparse.Namespace) -> dict:
    """Segment one synthetic image (run it `in_fresh_process`)."""
    keras.utils.set_random_seed(0)
    model = build_unet(NUM_CLASSES, filters=args.filters)
    settings = {
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "tile_batch_size": args.tile_batch_size,
    }
    # Warm-up: one batch of windows, so the floor holds TensorFlow and the model.
    model(np.zeros((args.tile_batch_size, args.tile, args.tile, 3), np.float32))
    floor = peak_memory_mb()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    start = time.perf_counter()
    if output == "whole":
        labels = inference.to_numpy_labels(
            inference.predict_probabilities(model, image.astype(np.float32))
        )
    elif output == "labels":
        labels = inference.predict_tiled_labels(model, image, **settings)
    else:
        labels = inference.to_numpy_labels(
            inference.predict_tiled(model, image, **settings)
        )
    seconds = time.perf_counter() - start
    if labels.shape != (height, width):
        raise ValueError(f"labels {labels.shape} for a {height} x {width} image")
    return {
        "image": f"{width}x{height}",
        "tile": "-" if output == "whole" else str(args.tile),
        "output": output,
        "seconds": seconds,
        "peak_mb": peak_memory_mb(),
        "floor_mb": floor,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--filters",
        type=int,
        nargs="+",
        default=[8, 16, 32, 64],
        help="U-Net channels per level (default: %(default)s)",
    )
    parser.add_argument("--tile", type=int, default=512, help="default: %(default)s")
    parser.add_argument(
        "--tile-overlap", type=float, default=0.25, help="default: %(default)s"
    )
    parser.add_argument(
        "--tile-batch-size", type=int, default=4, help="default: %(default)s"
    )
    parser.add_argument(
        "--cases",
        type=int,
        nargs="+",
        help=f"indices into CASES to run (default: all {len(CASES)})",
    )
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    cases = [CASES[index] for index in args.cases] if args.cases else CASES
    rows = [in_fresh_process(measure, *case, args) for case in cases]
    print(
        f"\n{device_name()}; U-Net filters {args.filters}, {NUM_CLASSES} classes, "
        f"overlap {args.tile_overlap}, {args.tile_batch_size} windows per call"
    )
    header = ("image", "tile", "output", "seconds", "peak MB", "floor MB", "image MB")
    print(
        f"{header[0]:<11}{header[1]:>6}{header[2]:>15}"
        + "".join(f"{h:>10}" for h in header[3:])
    )
    for row in rows:
        print(
            f"{row['image']:<11}{row['tile']:>6}{row['output']:>15}"
            f"{row['seconds']:>10.1f}{row['peak_mb']:>10.0f}{row['floor_mb']:>10.0f}"
            f"{row['peak_mb'] - row['floor_mb']:>10.0f}"
        )
    return rows


if __name__ == "__main__":
    main()
