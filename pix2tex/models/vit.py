"""Vision Transformer encoder for images of varying size.

Formula images differ in size, so the encoder accepts any height and width up to
``max_height`` x ``max_width`` (multiples of ``patch_size``).  A learned position embedding is
kept for the largest patch grid; an image with an ``h x w`` patch grid gets the top-left
``h x w`` part of it, so a patch keeps the same position code whatever the image size.

The pieces are timm's: a patch embedding layer (plain :class:`~timm.layers.PatchEmbed` here, a
CNN backbone in :mod:`pix2tex.models.hybrid`) is wrapped by :class:`GridPositionEmbedding` and
handed to :class:`~timm.models.vision_transformer.VisionTransformer` as its ``embed_layer``; the
transformer itself is timm's unchanged (class token, blocks, final norm).
"""

from __future__ import annotations

from collections.abc import Callable

import timm.models.vision_transformer as timm_vit
import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from pix2tex.config import ModelConfig
from pix2tex.preprocess import MEAN, STD

WHITE_INPUT = (1.0 - MEAN) / STD  # a white pixel after to_batch's normalization

__all__ = ["GridPositionEmbedding", "ImageEncoder", "check_images", "build_vit_encoder", "patch_mask"]


def check_images(images: Tensor, cfg: ModelConfig) -> None:
    """Raise ValueError (one line) unless ``images`` is a float [B, channels, H, W] batch the encoder accepts."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-d tensor [B, {cfg.channels}, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (normalized pixels), got dtype {images.dtype}")
    _, channels, height, width = images.shape
    if channels != cfg.channels:
        raise ValueError(f"images have {channels} channels, the model expects {cfg.channels}")
    if height == 0 or width == 0:
        raise ValueError(f"image size {height}x{width} is empty")
    if height % cfg.patch_size or width % cfg.patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch_size {cfg.patch_size}")
    if height > cfg.max_height or width > cfg.max_width:
        raise ValueError(
            f"image size {height}x{width} exceeds the model's maximum {cfg.max_height}x{cfg.max_width}")


def patch_mask(images: Tensor, sizes: Tensor, patch_size: int) -> Tensor:
    """Which memory rows hold an image's own pixels: bool [B, 1 + h*w] (class token first, always kept).

    ``sizes`` [B, 2] are the (height, width) of each image before it was padded to the batch's
    canvas (top-left placement); a patch is kept when it holds at least one of those pixels.
    """
    _, _, height, width = images.shape
    rows = torch.arange(0, height, patch_size, device=images.device)
    cols = torch.arange(0, width, patch_size, device=images.device)
    sizes = sizes.to(images.device)
    inside = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    keep_cls = torch.ones(images.shape[0], 1, dtype=torch.bool, device=images.device)
    return torch.cat((keep_cls, inside.flatten(1)), dim=1)


class GridPositionEmbedding(nn.Module):
    """Patch features [B, h, w, D] plus the top-left h x w part of a max-grid position table, flattened.

    ``patches`` must return channels-last grids (timm's ``output_fmt='NHWC'``).  The class token
    gets no position code: VisionTransformer is built with ``pos_embed='none'``, and a learned
    position added to a learned token would be redundant.
    """

    def __init__(self, patches: nn.Module, max_grid: tuple[int, int], dim: int):
        super().__init__()
        self.patches = patches
        self.pos_embed = nn.Parameter(torch.zeros(1, max_grid[0], max_grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)
        # VisionTransformer reads these two attributes off its embed layer.
        self.num_patches = max_grid[0] * max_grid[1]
        self.grid_size = max_grid

    def forward(self, images: Tensor) -> Tensor:
        grid = self.patches(images)  # [B, h, w, D]
        h, w = grid.shape[1], grid.shape[2]
        return (grid + self.pos_embed[:, :h, :w]).flatten(1, 2)


class ImageEncoder(nn.Module):
    """Images [B, C, H, W] -> memory [B, 1 + h*w, dim] for the decoder (class token first)."""

    def __init__(self, vit: VisionTransformer, cfg: ModelConfig):
        super().__init__()
        self.vit = vit
        self.cfg = cfg

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` (from :func:`patch_mask`) hides padded patches from every attention block."""
        check_images(images, self.cfg)
        if self.cfg.mask_padding:
            # White paper becomes 0, the value convolutions pad the canvas with: the pixels around an
            # image then look the same whether its canvas ends there or a batch's padding follows.
            images = images - WHITE_INPUT
        if mask is None:
            return self.vit.forward_features(images)
        return self.vit.forward_features(images, attn_mask=mask[:, None, None, :])

    @property
    def fused_attention(self) -> bool:
        """Whether the attention blocks use PyTorch's fused kernel (see :meth:`use_fused_attention`)."""
        return all(block.attn.fused_attn for block in self.vit.blocks)

    def use_fused_attention(self, enabled: bool) -> bool:
        """Attend with PyTorch's fused kernel (``enabled``) or timm's explicit softmax(QK^T)V; returns
        whether the fused kernel is in use afterwards.

        Both compute the same thing (to float rounding). The fused kernel is the one for GPUs and
        for fp32 on the CPU; under bf16 autocast on the CPU (torch 2.14) its backward pass costs
        about seven times its forward, and the recipe's bf16 training step runs about 20 % faster
        with the explicit form (``python -m benchmarks.train_step --levers``, docs/RESULTS.md).
        timm's explicit form turns boolean padding masks into -inf only since it has
        ``resolve_self_attn_mask``; with an older timm the fused kernel stays, so masks keep working.
        """
        if not enabled and not hasattr(timm_vit, "resolve_self_attn_mask"):
            enabled = True
        for block in self.vit.blocks:
            block.attn.fused_attn = enabled
        return enabled


def make_vision_transformer(cfg: ModelConfig, patches: Callable[..., nn.Module], patch_size: int) -> VisionTransformer:
    """timm's VisionTransformer whose embed layer is ``patches`` (given timm's embed arguments) + grid positions."""
    max_grid = (cfg.max_height // cfg.patch_size, cfg.max_width // cfg.patch_size)

    def embed_layer(**timm_args) -> nn.Module:
        # timm passes img_size, patch_size, in_chans, embed_dim, bias, dynamic_img_pad, device, dtype.
        timm_args["patch_size"] = patch_size
        return GridPositionEmbedding(patches(**timm_args, output_fmt="NHWC"), max_grid, cfg.dim)

    return VisionTransformer(
        img_size=(cfg.max_height, cfg.max_width), patch_size=cfg.patch_size, in_chans=cfg.channels,
        num_classes=0, global_pool="", embed_dim=cfg.dim, depth=cfg.encoder_depth, num_heads=cfg.heads,
        class_token=True, pos_embed="none", embed_layer=embed_layer,
    )


def build_vit_encoder(cfg: ModelConfig) -> ImageEncoder:
    """A plain ViT: a strided convolution cuts ``patch_size`` squares, then ``encoder_depth`` blocks."""

    def patches(**timm_args) -> nn.Module:
        return PatchEmbed(**timm_args, strict_img_size=False)  # any size that is a multiple of the patch

    return ImageEncoder(make_vision_transformer(cfg, patches, cfg.patch_size), cfg)
