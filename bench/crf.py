"""What the dense CRF buys and costs, on real VOC images with a simulated network.

    bash data/voc_download.sh                     # once: PASCAL VOC 2012
    python bench/crf.py                           # the table of docs/crf.md
    python bench/crf.py --split val --limit 4     # a quick look

The images are the 40 listed in `bench/voc_sample_ids.txt` (28 of VOC's train
split, 12 of its val split), read from `--data-dir`, so every VOC download gives
the same table. For every image of the split, the ground truth is turned into
what an output stride 8 network might predict
(`crf.simulated_stride8_probabilities`: void filled from its neighbours,
boundaries displaced by a smooth random field, one-hot averaged over 8 x 8
cells, noisy logits, bilinear upsampling), and scored with and without
`crf.dense_crf` at DeepLab's VOC settings: mean IoU over the split, and trimap
mean IoU within 4, 8 and 16 pixels of a boundary (void excluded).
The last line is the CRF's time per image (21 classes) on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.harness import SPLITS, device_name, sample_pairs  # noqa: E402
from common import crf, voc  # noqa: E402
from common.cli import run_cli  # noqa: E402
from common.metrics import ConfusionMatrix, mean_iou, trimap_mask  # noqa: E402

BANDS = (None, 4, 8, 16)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=voc.VOC_DIR,
        help="your PASCAL VOC 2012 folder (default: %(default)s)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="trainval",
        help="which images of bench/voc_sample_ids.txt (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument(
        "--noise", type=float, default=1.0, help="logit noise (default: %(default)s)"
    )
    parser.add_argument(
        "--boundary-shift",
        type=float,
        default=8.0,
        help="how far the simulated network misplaces boundaries, in pixels "
        "(default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    crf.require_pydensecrf()
    pairs = sample_pairs(args.data_dir, args.split)[: args.limit]
    num_classes = len(voc.VOC_CLASSES)
    metrics = {
        (method, band): ConfusionMatrix(num_classes)
        for method in ("network", "crf")
        for band in BANDS
    }
    rng = np.random.default_rng(0)
    seconds, pixels = [], []
    for image_path, mask_path in pairs:
        image, mask = (t.numpy() for t in voc.load_pair(image_path, mask_path, 21))
        probabilities = crf.simulated_stride8_probabilities(
            mask, num_classes, rng, args.noise, args.boundary_shift
        )
        start = time.perf_counter()
        refined = crf.dense_crf(image, probabilities)
        seconds.append(time.perf_counter() - start)
        pixels.append(mask.size)
        outputs = {"network": probabilities, "crf": refined}
        masks = {
            band: mask if band is None else trimap_mask(mask, band) for band in BANDS
        }
        for (method, band), metric in metrics.items():
            metric.update_state(masks[band][None], outputs[method][None])

    scores = {key: float(mean_iou(m.matrix)) for key, m in metrics.items()}
    print(f"{len(pairs)} images of {args.data_dir} {args.split}, {device_name()}")
    print(f"{'pixels scored':<22}{'without CRF':>12}{'with CRF':>10}{'gain':>8}")
    for band in BANDS:
        name = "all" if band is None else f"trimap {band} px"
        before, after = scores["network", band], scores["crf", band]
        print(f"{name:<22}{before:>12.1%}{after:>10.1%}{100 * (after - before):>+8.1f}")
    per_megapixel = sum(seconds) / sum(pixels) * 1e6
    print(
        f"dense_crf, 21 classes, 10 iterations: {np.median(seconds):.2f} s per image "
        f"(median; {per_megapixel:.2f} s per megapixel)"
    )
    return scores


if __name__ == "__main__":
    run_cli(main)
