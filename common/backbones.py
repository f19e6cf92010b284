"""ImageNet backbones from `keras.applications`, with a clear error when offline."""

from __future__ import annotations

import keras
import numpy as np

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


# --------------------------------------------------------------------------
# Images that are not RGB: the first convolution's pretrained kernel
# --------------------------------------------------------------------------

# Spread of an ImageNet colour channel (standard deviation, on [0, 255]: 58.4,
# 57.1 and 57.4 for R, G and B) as each backbone's first convolution sees it:
# Caffe's preprocessing (VGG-16, ResNet-50) only subtracts the mean;
# MobileNetV2 and Xception scale to [-1, 1] (divide by 127.5). Bands that are
# not RGB arrive standardised (std 1, `common.layers.BandNormalization`), so
# an adapted kernel is multiplied by this to keep its outputs' ImageNet scale.
IMAGENET_STD = 57.63
RGB_INPUT_STD = {
    "vgg16": IMAGENET_STD,
    "resnet50": IMAGENET_STD,
    "mobilenetv2": IMAGENET_STD / 127.5,
    "xception": IMAGENET_STD / 127.5,
}


def adapt_rgb_kernel(kernel: np.ndarray, bands: int) -> np.ndarray:
    """An RGB convolution kernel `(kh, kw, 3, filters)` made `(kh, kw, bands, filters)`.

    segmentation_models' rule (`patch_first_conv` in segmentation_models_pytorch):
    one band gets the sum of the colour filters, so a grey image g gives what
    the colour image (g, g, g) gave; more bands get the colour filters repeated
    in turn (R, G, B, R, G, ...) and scaled by 3 / bands, so that bands which
    look alike give, summed, what the three colours gave.
    """
    colors = kernel.shape[2]
    if bands == 1:
        return kernel.sum(axis=2, keepdims=True)
    cycle = [band % colors for band in range(bands)]
    return kernel[:, :, cycle] * (colors / bands)


def adapt_first_convolution(
    source: keras.Model, target: keras.Model, backbone: str
) -> list[str]:
    """Give `target`'s first convolution the RGB kernel of `source`, adapted.

    For a `target` built for other bands than RGB, after
    `copy_weights_by_name`, which skips the layer whose kernel has another
    shape: each `target` convolution whose namesake in `source` has the same
    kernel shape but for its 3 input channels takes `adapt_rgb_kernel` of
    it, times `RGB_INPUT_STD[backbone]` (the input is standardised, not
    RGB), and its bias if both have one. Says what it did; returns the
    adapted layers' names.
    """
    source_layers = {layer.name: layer for layer in source.layers}
    adapted = []
    for layer in target.layers:
        match = source_layers.get(layer.name)
        kernel = getattr(layer, "kernel", None)
        rgb_kernel = getattr(match, "kernel", None)
        if kernel is None or rgb_kernel is None or len(kernel.shape) != 4:
            continue
        (height, width, bands, filters) = kernel.shape
        if bands == 3 or tuple(rgb_kernel.shape) != (height, width, 3, filters):
            continue
        weights = adapt_rgb_kernel(np.asarray(rgb_kernel), bands)
        kernel.assign(weights * RGB_INPUT_STD[backbone])
        bias, rgb_bias = getattr(layer, "bias", None), getattr(match, "bias", None)
        if bias is not None and rgb_bias is not None:
            bias.assign(rgb_bias)
        rule = (
            "summing its R, G and B filters"
            if bands == 1
            else f"repeating its R, G and B filters in turn, times 3/{bands}"
        )
        print(
            f"{layer.name}: first convolution adapted from RGB to {bands} "
            f"band{'' if bands == 1 else 's'} by {rule}, and times "
            f"{RGB_INPUT_STD[backbone]:.3g} for standardised bands."
        )
        adapted.append(layer.name)
    return adapted
