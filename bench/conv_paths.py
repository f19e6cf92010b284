"""Which CPU path is faster for the convolutions that have two: the rules' evidence.

    python bench/conv_paths.py             # oneDNN off and on, each in its own process
    python bench/conv_paths.py --onednn on

`common.layers.MatmulConv2D` (FCN's fc6 and fc7) and `AtrousConv2D` (DeepLab)
compute a convolution either with TensorFlow's own kernel or as one matrix
product over shifted copies of the input (`shifted_copies_product`). Each row
times both on the same input, forward and backward (the gradients of the input
and the kernel, as in a training step), and names the path the layer's rule
picks; "rule ok" says whether that is the faster one or within 10% of it.
TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` when it loads, so each setting runs in
a fresh process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from bench.harness import ONEDNN, cpu_description, in_fresh_process  # noqa: E402
from common.layers import AtrousConv2D, MatmulConv2D  # noqa: E402

# (what, batch, side, input channels, kernel, rate, filters): the shapes that
# FCN-8s (crops 128 and 320) and DeepLab give these layers: v3's ASPP and
# dilated ResNet blocks at 256 and 512 pixels (rate 4: output stride 8), and
# v1's atrous fc6 on a 321-pixel crop.
CASES = (
    ("FCN fc6, crop 128", 4, 4, 512, 7, 1, 4096),
    ("FCN fc6, crop 320", 4, 10, 512, 7, 1, 4096),
    ("FCN fc7, crop 128", 4, 4, 4096, 1, 1, 4096),
    ("FCN fc7, crop 320", 4, 10, 4096, 1, 1, 4096),
    ("ASPP rate 12, 16x16", 2, 16, 2048, 3, 12, 256),
    ("ASPP rate 18, 32x32", 2, 32, 2048, 3, 18, 256),
    ("ASPP rate 6, 32x32", 2, 32, 2048, 3, 6, 256),
    ("ResNet block rate 2, 32x32", 2, 32, 512, 3, 2, 512),
    ("ResNet block rate 4, 32x32", 2, 32, 512, 3, 4, 512),
    ("VGG fc6 rate 12, 40x40 (v1)", 2, 40, 512, 3, 12, 1024),
)


def layer_for(kernel: int, rate: int, filters: int):
    """The project's layer for this convolution, whose rule picks a path."""
    layer = AtrousConv2D if rate > 1 else MatmulConv2D
    return layer(filters, kernel, padding="same", dilation_rate=rate)


def forward_backward_ms(layer, inputs: tf.Tensor, repeats: int) -> float:
    """Median ms of one forward pass and both gradients, after a warm-up."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    step(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [gradient.numpy() for gradient in step(inputs)]
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def time_paths(repeats: int) -> list[dict]:
    """Every case, both paths and the rule's pick, in this process's oneDNN mode."""
    rows = []
    for what, batch, side, channels, kernel, rate, filters in CASES:
        inputs = tf.random.normal((batch, side, side, channels))
        chosen = layer_for(kernel, rate, filters)
        chosen.build(inputs.shape)
        native = layers.Conv2D(filters, kernel, padding="same", dilation_rate=rate)
        native.build(inputs.shape)
        product = MatmulConv2D(filters, kernel, padding="same", dilation_rate=rate)
        product.build(inputs.shape)
        times = {
            "native": forward_backward_ms(native, inputs, repeats),
            "product": forward_backward_ms(product, inputs, repeats),
        }
        rule = "product" if chosen._product_is_faster(inputs) else "native"
        rows.append({"case": what, **times, "rule": rule})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onednn",
        nargs="+",
        choices=list(ONEDNN),
        default=["off", "on"],
        help="TensorFlow's oneDNN settings to time, each in its own process "
        "(default: off on)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per path (default: 3)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    results = {
        mode: in_fresh_process(time_paths, args.repeats, env=ONEDNN[mode])
        for mode in args.onednn
    }
    print(f"\n{cpu_description()}; ms forward + backward, median of {args.repeats}")
    header = f"{'case':<28}" + "".join(
        f"{mode + ' ' + column:>20}"
        for mode in results
        for column in ("conv / product", "rule ok")
    )
    print(header)
    for index, (what, *_) in enumerate(CASES):
        line = f"{what:<28}"
        for rows in results.values():
            row = rows[index]
            fastest = min(row["native"], row["product"])
            ok = row[row["rule"]] <= 1.1 * fastest
            line += f"{row['native']:>10.0f} /{row['product']:>8.0f}"
            line += f"{row['rule'] + (' ok' if ok else ' SLOWER'):>20}"
        print(line)
    return results


if __name__ == "__main__":
    main()
