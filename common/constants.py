"""Values every layer of `common/` agrees on; imports nothing of ours."""

from __future__ import annotations

# 255 = void (object borders, "difficult" regions in VOC): never trained, never
# scored. Other datasets' void values are remapped to it when masks are read.
IGNORE_LABEL = 255

# ImageNet mean RGB on the [0, 255] scale: padded pixels look "average", and
# after each model's own normalisation they are close to zero.
IMAGE_MEAN = (123.675, 116.28, 103.53)

# The terms of --loss (common/losses.py computes them; common/cli.py parses the
# flag, and may not import the losses: the tools that only predict load cli).
LOSS_TERMS = ("ce", "focal", "dice", "lovasz", "lovasz_image")
