"""Training and inference speed of every architecture, in one table.

    pip install -r bench/requirements.txt     # keras-hub, for the peer model
    python bench/train_speed.py                          # all models, 256 px, batch 2
    python bench/train_speed.py --crop-size 512 --batch-size 8 --models unet fcn8s

For each model, on one batch held in memory (so the input pipeline is not
measured; `bench/pipeline.py` does that): parameters, forward FLOPs per image
(counted by TensorFlow's profiler on the traced graph), training and inference
images/s, ms per training step, peak memory, and the achieved training FLOP/s
(3x forward: forward, and backward for activations and weights) as a share of
this machine's float32 matrix-multiply rate, measured in the same run with a
large `tf.linalg.matmul`. The peer, keras-hub's `DeepLabV3ImageSegmenter` with
a random ResNet-50, runs at the same size; the last column is each model's
time per step over the peer's (compare it on the deeplabv3plus_resnet50 row).
Each model runs in a fresh process, so peak memory is its own. Note that
keras-hub's DeepLabV3 applies its pyramid pooling to the stride-32 map of an
undilated ResNet, which costs far fewer FLOPs than the dilated
output-stride-16 network of the paper.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.harness import (  # noqa: E402
    MODELS,
    NUM_CLASSES,
    add_models_arg,
    device_name,
    in_fresh_process,
    peak_memory_mb,
)
from common.losses import segmentation_loss  # noqa: E402


def keras_hub_deeplab() -> keras.Model:
    """keras-hub's DeepLabV3+ on a randomly initialised ResNet-50 (the peer)."""
    import keras_hub

    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone, NUM_CLASSES)


def forward_flops(model: keras.Model, crop_size: int) -> float:
    """Floating-point operations of one forward pass on one image."""
    spec = tf.TensorSpec((1, crop_size, crop_size, 3), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(
        tf.compat.v1.profiler.profile(graph.graph, options=options).total_float_ops
    )


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 FLOP/s on a large square matrix product."""
    a = tf.random.normal((size, size))
    product = tf.function(lambda x: tf.linalg.matmul(x, x))
    product(a).numpy()  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        result = product(a)
    result.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    step()  # the first call traces and compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


PEER = "keras-hub deeplabv3+ r50"


def measure(name: str, args: argparse.Namespace, rate: float) -> dict:
    """Time one model (run it `in_fresh_process`: peak memory is per process)."""
    keras.utils.set_random_seed(0)
    model = keras_hub_deeplab() if name == PEER else MODELS[name]()
    rng = np.random.default_rng(0)
    size = (args.batch_size, args.crop_size, args.crop_size)
    images = rng.uniform(0, 255, (*size, 3)).astype(np.float32)
    masks = rng.integers(0, NUM_CLASSES, size).astype(np.int32)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss=segmentation_loss(),
        metrics=[],  # keras-hub's segmenter would add accuracy by default.
        jit_compile=args.jit_compile,
    )
    train = median_seconds(lambda: model.train_on_batch(images, masks), args.steps)
    infer = median_seconds(lambda: model.predict_on_batch(images), args.steps)
    flops = forward_flops(model, args.crop_size)
    row = {
        "model": name,
        "params_m": model.count_params() / 1e6,
        "gflops": flops / 1e9,
        "train_ips": args.batch_size / train,
        "infer_ips": args.batch_size / infer,
        "ms_step": 1000 * train,
        "peak_mb": peak_memory_mb(),
        "share": 3 * flops * args.batch_size / train / rate,
    }
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_models_arg(parser)
    parser.add_argument(
        "--crop-size", type=int, default=256, help="default: %(default)s"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, help="default: %(default)s"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps after one warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--jit-compile", action="store_true", help="XLA for every model"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip keras-hub's model")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    rate = matmul_rate()
    names = [*args.models, *([] if args.no_peer else [PEER])]
    rows = [in_fresh_process(measure, name, args, rate) for name in names]
    peer_ms = rows[-1]["ms_step"] if not args.no_peer else None
    print(
        f"\n{device_name()}, float32 matmul {rate / 1e9:.0f} GFLOP/s; crop "
        f"{args.crop_size}, batch {args.batch_size}, XLA {args.jit_compile}"
    )
    header = (
        "model",
        "params M",
        "GFLOP/img",
        "train img/s",
        "infer img/s",
        "ms/step",
        "peak MB",
        "of matmul",
        "ms vs peer",
    )
    print("".join(f"{h:>12}" if i else f"{h:<26}" for i, h in enumerate(header)))
    for row in rows:
        print(
            f"{row['model']:<26}{row['params_m']:>12.1f}{row['gflops']:>12.1f}"
            f"{row['train_ips']:>12.2f}{row['infer_ips']:>12.2f}"
            f"{row['ms_step']:>12.0f}{row['peak_mb']:>12.0f}{row['share']:>12.0%}"
            + (f"{row['ms_step'] / peer_ms:>11.2f}x" if peer_ms else "")
        )
    return rows


if __name__ == "__main__":
    main()
