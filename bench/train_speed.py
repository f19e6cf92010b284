"""Training and inference speed of every architecture, in one table.

    pip install -r bench/requirements.txt     # keras-hub, for the peer model
    python bench/train_speed.py                          # all models, 256 px, batch 2
    python bench/train_speed.py --crop-size 512 --batch-size 8 --models unet fcn8s
    python bench/train_speed.py --onednn off on --crop-size 128 --batch-size 4 --no-peer
    python bench/train_speed.py --backend tensorflow jax --crop-size 128 --no-peer

For each model, on one batch held in memory (so the input pipeline is not
measured; `bench/pipeline.py` does that): parameters, forward FLOPs per image
(counted by TensorFlow's profiler on the traced graph), training and inference
images/s, ms per training step, peak memory, and the achieved training FLOP/s
(3x forward: forward, and backward for activations and weights) as a share of
this machine's float32 matrix-multiply rate, measured in the same run with a
large `tf.linalg.matmul`. The peer, keras-hub's `DeepLabV3ImageSegmenter` with
a random ResNet-50, runs at the same size; the last column is each model's
time per step over the peer's (compare it on the deeplabv3plus_resnet50 row).
Each model runs in a fresh process, so peak memory is its own, and under
each `--onednn` setting (TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` when it
loads); the header names the CPU, its AVX-512/AMX features and whether
TensorFlow turns oneDNN on there by default. `--backend tensorflow jax`
times every model on each Keras backend, each in its own process
(`KERAS_BACKEND` is set for it), and adds a side-by-side table: ms per step
on each and the ratio. JAX always compiles the step with XLA; TensorFlow
does only with `--jit-compile`. On JAX the FLOPs (a TensorFlow graph's count)
and the share of matmul are not given, and the peer runs on TensorFlow only.
Note that
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

from bench.harness import (  # noqa: E402
    MODELS,
    NUM_CLASSES,
    ONEDNN,
    add_models_arg,
    cpu_description,
    device_name,
    in_fresh_process,
    peak_memory_mb,
)
from common import backend  # noqa: E402
from common.backend import tf  # noqa: E402
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
    """Floating-point operations of one forward pass on one image (TensorFlow)."""
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


def measure(name: str, args: argparse.Namespace, rate: float | None) -> dict:
    """Time one model (run it `in_fresh_process`: peak memory is per process).

    `rate` is `matmul_rate()` on TensorFlow; on another backend "gflops" and
    "share" are None, as the FLOPs are counted on a TensorFlow graph.
    """
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
        # Keras on JAX runs an uncompiled step op by op, far slower than
        # anyone trains; XLA is how JAX runs.
        jit_compile=True if backend.name() == "jax" else args.jit_compile,
    )
    train = median_seconds(lambda: model.train_on_batch(images, masks), args.steps)
    infer = median_seconds(lambda: model.predict_on_batch(images), args.steps)
    gflops = share = None
    if backend.name() == "tensorflow":
        flops = forward_flops(model, args.crop_size)
        gflops, share = flops / 1e9, 3 * flops * args.batch_size / train / rate
    return {
        "model": name,
        "params_m": model.count_params() / 1e6,
        "gflops": gflops,
        "train_ips": args.batch_size / train,
        "infer_ips": args.batch_size / infer,
        "ms_step": 1000 * train,
        "peak_mb": peak_memory_mb(),
        "share": share,
    }


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
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=list(BACKEND_NAMES),
        default=["tensorflow"],
        help="Keras backend(s); each model is timed on each in its own process, "
        "and `--backend tensorflow jax` adds a side-by-side table "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--onednn",
        nargs="+",
        choices=list(ONEDNN),
        default=["default"],
        help="TensorFlow's oneDNN setting(s); each model is timed under each in "
        "its own process, and `--onednn off on` adds a side-by-side table "
        "(default: whatever TensorFlow picks for this CPU)",
    )
    return parser.parse_args(argv)


def onednn_is_on() -> bool:
    """Whether TensorFlow in this process runs its CPU ops through oneDNN.

    TensorFlow decides when it loads: `TF_ENABLE_ONEDNN_OPTS` if set, else
    its own rule for the CPU (on for x86 CPUs with AVX-512 VNNI, BF16 or AMX
    instructions: most Intel servers, and AMD Zen 4).
    """
    from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own flag.

    return bool(_pywrap_util_port.IsMklEnabled())


def print_table(rows: list[dict], heading: str, peer_ms: float | None) -> None:
    """One row per model; "-" where a number was not measured (FLOPs off
    TensorFlow)."""
    print(heading)
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
        gflops = (
            f"{row['gflops']:>12.1f}" if row["gflops"] is not None else f"{'-':>12}"
        )
        share = f"{row['share']:>12.0%}" if row["share"] is not None else f"{'-':>12}"
        print(
            f"{row['model']:<26}{row['params_m']:>12.1f}{gflops}"
            f"{row['train_ips']:>12.2f}{row['infer_ips']:>12.2f}"
            f"{row['ms_step']:>12.0f}{row['peak_mb']:>12.0f}{share}"
            + (f"{row['ms_step'] / peer_ms:>11.2f}x" if peer_ms else "")
        )


def print_comparison(tables: dict[str, list[dict]], what: str = "") -> None:
    """Each model's step and inference in every table, side by side, with the
    step's ratio to the first table's; a model missing from a table (the
    peer, TensorFlow only) is left out."""
    labels = list(tables)
    width = max(8, *(len(label) + 1 for label in labels))
    print(f"\n{what}{' vs '.join(labels)}: ms/step (ratio to {labels[0]}), infer img/s")
    by_model = [{row["model"]: row for row in tables[label]} for label in labels]
    for row in tables[labels[0]]:
        if not all(row["model"] in rows for rows in by_model):
            continue
        line = f"{row['model']:<26}"
        for label, rows in zip(labels, by_model):
            other = rows[row["model"]]
            ratio = other["ms_step"] / row["ms_step"]
            line += f"{label:>{width}}{other['ms_step']:>8.0f} ms ({ratio:.2f}x)"
            line += f"{other['infer_ips']:>7.2f}/s"
        print(line)


# The name each backend's tables go by.
BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX"}


def main(argv=None) -> dict[str, list[dict]]:
    """Every model under each setting; returns setting -> rows: each `--onednn`
    setting on TensorFlow by its name ("default", "off", "on"), each other
    `--backend` by its own ("jax")."""
    args = parse_args(argv)
    # The denominator of TensorFlow's share of matmul (its FLOPs only).
    rate = matmul_rate() if "tensorflow" in args.backend else None
    tables = {}
    for backend_name in args.backend:
        environment = {"KERAS_BACKEND": backend_name}
        if backend_name != "tensorflow":
            tables[backend_name] = [
                in_fresh_process(measure, name, args, rate, env=environment)
                for name in args.models
            ]
            continue
        names = [*args.models, *([] if args.no_peer else [PEER])]
        for mode in args.onednn:
            tables[mode] = [
                in_fresh_process(
                    measure, name, args, rate, env={**environment, **ONEDNN[mode]}
                )
                for name in names
            ]
    tensorflow = ""
    if rate is not None:
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        origin = f"TF_ENABLE_ONEDNN_OPTS={setting}" if setting else "TensorFlow default"
        tensorflow = (
            f"; oneDNN {'on' if onednn_is_on() else 'off'} in this process ({origin})"
            f"; float32 matmul {rate / 1e9:.0f} GFLOP/s"
        )
    print(
        f"\n{device_name()}: {cpu_description()}{tensorflow}; crop {args.crop_size}, "
        f"batch {args.batch_size}, XLA {args.jit_compile}"
        + ("" if args.backend == ["tensorflow"] else " (JAX: always)")
    )
    for key, rows in tables.items():
        if key == "jax":
            print_table(rows, "\nJAX (XLA; no FLOPs counted, no peer):", None)
            continue
        peer_ms = rows[-1]["ms_step"] if not args.no_peer else None
        print_table(rows, f"\noneDNN {key}:", peer_ms)
    onednn_tables = {mode: tables[mode] for mode in args.onednn if mode in tables}
    if len(onednn_tables) > 1:
        print_comparison(onednn_tables, "oneDNN ")
    if len(args.backend) > 1:
        # TensorFlow under the first --onednn setting, beside each other backend.
        print_comparison(
            {
                BACKEND_NAMES[name]: tables[
                    args.onednn[0] if name == "tensorflow" else name
                ]
                for name in args.backend
            }
        )
    return tables


if __name__ == "__main__":
    main()
