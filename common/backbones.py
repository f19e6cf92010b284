"""ImageNet backbones from `keras.applications`, with a clear error when offline."""

from __future__ import annotations

import keras

from common.voc import InputError


def load_vgg16(backbone_weights: str, include_top: bool) -> keras.Model:
    """`keras.applications.VGG16` from "imagenet" (downloaded once) or a weights file.

    `include_top=True` keeps fc1/fc2, which FCN turns into convolutions.
    """
    try:
        return keras.applications.VGG16(
            weights=backbone_weights,
            include_top=include_top,
            input_shape=None if include_top else (None, None, 3),
        )
    except ValueError:
        raise  # A path that does not exist or does not fit; Keras says which.
    except Exception as error:  # Keras raises a bare Exception when offline.
        if backbone_weights != "imagenet":
            raise
        file = "vgg16_weights_tf_dim_ordering_tf_kernels" + (
            ".h5" if include_top else "_notop.h5"
        )
        raise InputError(
            f"Could not download VGG-16's ImageNet weights ({error}). If this "
            f"machine is offline, copy {file} here and pass its path with "
            "--backbone-weights PATH, or train from random weights with "
            "--backbone-weights none."
        ) from error
