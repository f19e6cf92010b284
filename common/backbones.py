"""ImageNet backbones from `keras.applications`, with a clear error when offline."""

from __future__ import annotations

import keras

from common.errors import InputError

APPLICATIONS = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}


def load_application(
    name: str, weights: str | None, include_top: bool = False
) -> keras.Model:
    """A `keras.applications` model: random (None), "imagenet", or a weights file.

    Our backbones use the applications' layer names, so weights are copied
    across by name. `include_top=True` keeps VGG-16's fc1/fc2, which FCN and
    DeepLab v1 turn into convolutions. "imagenet" is downloaded once to
    ~/.keras/models; offline, that fails with a message that says what to do.
    """
    application = getattr(keras.applications, APPLICATIONS[name])
    shape = None if include_top else (None, None, 3)
    try:
        return application(weights=weights, include_top=include_top, input_shape=shape)
    except ValueError:
        raise  # A file that does not exist or does not fit; Keras says which.
    except Exception as error:  # Keras raises a bare Exception when offline.
        if weights != "imagenet":
            raise
        raise InputError(
            f"Could not download the ImageNet weights of {name} ({error}). If "
            "this machine is offline, download them elsewhere and pass the file "
            "with --backbone-weights PATH, or train from random weights with "
            "--backbone-weights none."
        ) from error


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy weights into every `target` layer whose namesake in `source` fits.

    Our backbones carry the layer names of `keras.applications` (and a trained
    run carries its own), so pretrained weights move across by name: a layer
    is copied when `source` has a layer of the same name holding each of its
    variables (same variable name, same shape). A convolution without a bias
    takes only the kernel of a namesake with one. Layers whose namesake has
    other shapes (a classifier for another number of classes) keep their
    initialisation. Returns the names of the copied layers.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied = []
    for layer in target.layers:
        match = source_layers.get(layer.name)
        if match is None or not layer.weights:
            continue
        available = {variable.name: variable for variable in match.weights}
        pairs = [(variable, available.get(variable.name)) for variable in layer.weights]
        if all(
            found is not None and tuple(found.shape) == tuple(variable.shape)
            for variable, found in pairs
        ):
            for variable, found in pairs:
                variable.assign(found)
            copied.append(layer.name)
    return copied
