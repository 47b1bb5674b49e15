"""Image transforms: the augmentation of training images.

Images everywhere are grayscale ``uint8`` arrays ``[H, W]``, dark ink on a white background.
``train_transform`` makes the project's clean TeX renders look like formulas cut out of real
documents (the im2latex-100k renders, screenshots, scans): small geometric jitter, blur and noise,
JPEG artefacts, contrast changes, resolution loss, thinner or bolder strokes.
``test_transform`` leaves the pixels alone.  (:func:`pix2tex.preprocess.to_batch` pads and
normalizes for the model.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["train_transform", "test_transform"]

WHITE = 255


def train_transform(level: str = "full") -> A.Compose:
    """A fresh augmentation pipeline; seed it per sample with ``set_random_seed`` for exact resume.

    ``level`` "light" keeps only small geometric jitter, blur and contrast changes (a model that
    cannot read yet learns faster from cleaner images); "full" adds distortion, stroke width,
    noise, resolution loss and JPEG artefacts.
    """
    # Imported here, not at the top: only training augments, and albumentations is slow to import
    # (code that only reads datasets, such as pix2tex.eval, never pays for it).
    import albumentations as A

    if level == "light":
        return A.Compose([
            A.Affine(scale=(0.9, 1.05), rotate=(-0.5, 0.5), interpolation=cv2.INTER_LINEAR, fit_output=True,
                     border_mode=cv2.BORDER_CONSTANT, fill=WHITE, p=0.3),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.2, 0.7), p=0.2),
            A.RandomBrightnessContrast(brightness_limit=(-0.1, 0.05), contrast_limit=(-0.2, 0.05), p=0.3),
        ])
    if level != "full":
        raise ValueError(f"augmentation level must be 'light' or 'full', got {level!r}")
    return A.Compose([
        A.Affine(scale=(0.85, 1.1), rotate=(-1.0, 1.0), shear={"x": (-3.0, 3.0), "y": (-1.0, 1.0)},
                 interpolation=cv2.INTER_LINEAR, fit_output=True, border_mode=cv2.BORDER_CONSTANT,
                 fill=WHITE, p=0.5),
        A.GridDistortion(num_steps=4, distort_limit=(-0.08, 0.08), border_mode=cv2.BORDER_CONSTANT,
                         fill=WHITE, p=0.15),  # the default fill is black: dark lines along the edges
        # Stroke width varies between fonts, printers and screen renderers.
        A.Morphological(scale=(2, 2), operation="erosion", p=0.1),  # erosion of white = bolder ink
        A.Morphological(scale=(2, 2), operation="dilation", p=0.05),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.2, 0.9)),
            A.Downscale(scale_range=(0.5, 0.9),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}),
        ], p=0.4),
        A.RandomBrightnessContrast(brightness_limit=(-0.15, 0.1), contrast_limit=(-0.3, 0.1), p=0.4),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
    ])


def test_transform() -> A.Compose:
    """No-op pipeline with the same call shape as :func:`train_transform`."""
    import albumentations as A  # here, not at the top: see train_transform

    return A.Compose([])
