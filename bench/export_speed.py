"""Inference speed of a trained model: Keras against each format export.py writes.

    python export.py --model runs/RUN/best.keras --format saved_model tflite onnx
    python bench/export_speed.py --model runs/RUN/best.keras --size 256 --batch 1 4

Times what an app calls, on one uint8 batch of `--size` pixels square: Keras
(`common.inference.predict_probabilities`, the padded float path of
evaluate.py/predict.py, one image at a time in a loop for batches), and the
exported signature through TensorFlow (SavedModel), the LiteRT interpreter
and ONNX Runtime. Prints the median latency per batch and images per second.
All runtimes use every core (`--threads` to change it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import exported, inference  # noqa: E402
from export import artefact_name  # noqa: E402


def median_seconds(run: Callable, images: np.ndarray, repeats: int) -> float:
    """Median wall time of `run(images)` after one warm-up call."""
    run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def runners(model_path: str, export_dir: str, threads: int | None) -> dict:
    """Keras and every export found in `export_dir`, each as `run(uint8 batch)`."""
    model = inference.load_model(model_path)

    def keras_run(images):
        return [inference.predict_probabilities(model, image) for image in images]

    found = {"keras": keras_run}
    for format, runner in [
        ("saved_model", exported.SavedModelRunner),
        ("tflite", exported.LiteRTRunner),
        ("onnx", exported.OnnxRunner),
    ]:
        for quantize in (
            ("none", "float16", "int8") if format == "tflite" else ("none",)
        ):
            path = os.path.join(export_dir, artefact_name(format, quantize))
            if os.path.exists(path):
                kwargs = {} if format == "saved_model" else {"num_threads": threads}
                name = format if quantize == "none" else f"{format} {quantize}"
                found[name] = runner(path, **kwargs).run
    return found


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .keras file")
    parser.add_argument(
        "--export-dir", help="export.py's --out (default: export/ beside the model)"
    )
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batches")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls")
    parser.add_argument("--threads", type=int, help="LiteRT/ONNX threads (all)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    export_dir = args.export_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.model)), "export"
    )
    rows = []
    rng = np.random.default_rng(0)
    print(f"{args.size}x{args.size} px, CPU x{os.cpu_count()}")
    print(f"{'runtime':<20} {'batch':>5} {'ms/batch':>9} {'images/s':>9}")
    for name, run in runners(args.model, export_dir, args.threads).items():
        for batch in args.batch:
            images = rng.integers(0, 256, (batch, args.size, args.size, 3), np.uint8)
            seconds = median_seconds(run, images, args.repeats)
            rows.append({"runtime": name, "batch": batch, "seconds": seconds})
            print(
                f"{name:<20} {batch:>5} {1000 * seconds:>9.1f} {batch / seconds:>9.1f}"
            )
    return rows


if __name__ == "__main__":
    main()
