"""Hybrid encoder: a ResNetV2 CNN backbone whose feature map is cut into patches for a ViT.

This is the classic pix2tex encoder.  The backbone (timm :class:`~timm.models.resnetv2.ResNetV2`
with weight-standardised, TF-"SAME"-padded convolutions) shrinks the image by
``2 ** (len(backbone_layers) + 1)``; timm's :class:`~timm.layers.HybridEmbed` then projects each
``patch_size / that`` square of the feature map to one token.  Everything after the patch
embedding (position codes, class token, blocks) is shared with the plain ViT in
:mod:`pix2tex.models.vit`.
"""

from __future__ import annotations

from functools import partial

from timm.layers import BatchNormAct2d, GroupNormAct, HybridEmbed, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import nn

from pix2tex.config import ConfigError, ModelConfig
from pix2tex.models.vit import ImageEncoder, make_vision_transformer

__all__ = ["min_patch_size", "build_backbone", "build_hybrid_encoder"]


def min_patch_size(backbone_layers: list[int]) -> int:
    """The backbone's downsampling factor: stem (x4) and every stage after the first (x2 each)."""
    return 2 ** (len(backbone_layers) + 1)


def build_backbone(cfg: ModelConfig) -> ResNetV2:
    """ResNetV2 without classifier head or pooling: [B, C, H, W] -> [B, F, H/m, W/m], m = min_patch_size."""
    widths = {"channels": tuple(cfg.backbone_channels)} if cfg.backbone_channels else {}
    norm = BatchNormAct2d if cfg.backbone_norm == "batch" else partial(GroupNormAct, num_groups=32)
    return ResNetV2(
        layers=list(cfg.backbone_layers), num_classes=0, global_pool="", in_chans=cfg.channels,
        preact=False, stem_type="same", conv_layer=StdConv2dSame, stem_chs=cfg.stem_channels,
        norm_layer=norm, **widths,
    )


def build_hybrid_encoder(cfg: ModelConfig) -> ImageEncoder:
    """ResNetV2 backbone + HybridEmbed + timm VisionTransformer; ConfigError if patch_size does not fit the backbone."""
    step = min_patch_size(cfg.backbone_layers)
    if cfg.patch_size % step:
        raise ConfigError(
            f"patch_size ({cfg.patch_size}) must be a multiple of the backbone's downsampling factor ({step}) "
            f"for backbone_layers {list(cfg.backbone_layers)}")
    backbone = build_backbone(cfg)

    def patches(**timm_args) -> nn.Module:
        # HybridEmbed runs the backbone once on a max-size image to learn its output size and width.
        return HybridEmbed(backbone, **timm_args)

    return ImageEncoder(make_vision_transformer(cfg, patches, cfg.patch_size // step), cfg)
