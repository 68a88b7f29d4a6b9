"""Swin Transformer v1 visual backbone with the official GLIP parameter layout (microsoft/GLIP
maskrcnn_benchmark/modeling/backbone/swint.py, ``SwinTransformer``).

Detectron2's :class:`~detectron2.modeling.backbone.swin.SwinTransformer` already has GLIP's
blocks, parameter names, -100 shift mask, pad-after-norm1 and patch-merging order. This
subclass changes what GLIP needs on top of it:

* outputs are named ``stage2..stage5`` (strides 4..32); stage index 0 gets no output norm
  (``norm0`` is an Identity without parameters, the official RETINANET rule);
* ``relative_position_index`` is a non-persistent buffer (recomputed, never checkpointed);
* stochastic depth without timm, frozen stages kept in eval mode by ``train()``,
  gradient checkpointing only when gradients are being recorded.
"""

import torch
import torch.utils.checkpoint as cp
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.swin import SwinTransformer, window_partition
from torch import nn

__all__ = ["DropPath", "GLIPSwinTransformer", "build_glip_swin_backbone"]

_STAGE_NAMES = ("stage2", "stage3", "stage4", "stage5")


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample (training only).

    Kept samples are rescaled by ``1 / (1 - p)`` so the expectation is unchanged.
    """

    def __init__(self, drop_prob):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob:.3f}"


def shifted_window_mask(height, width, window_size, shift_size, device):
    """Additive attention mask of the shifted windows: 0 inside a region, -100 across.

    The padded map is cut into 3 x 3 regions by the rows and columns ``window_size`` and
    ``shift_size`` from its end (the official slices ``[0, -window_size)``, ``[-window_size,
    -shift_size)``, ``[-shift_size, end)``), labelled 0..8 row-major; two tokens of a window
    attend to each other only within one region. The labels come from comparisons with
    ``arange`` instead of slice assignments, so that a traced graph (ONNX export) computes
    them for any size.

    Args:
        height, width (int): feature size, already padded to multiples of ``window_size``.
    Returns:
        Tensor (num_windows, window_size**2, window_size**2), float32.
    """

    def band(size):  # 0, 1, 2 for the three slices along one axis
        index = torch.arange(size, device=device)
        return (index >= size - window_size).float() + (index >= size - shift_size).float()

    region = (3 * band(height)[:, None] + band(width)[None, :]).view(1, height, width, 1)
    windows = window_partition(region, window_size).view(-1, window_size * window_size)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class GLIPSwinTransformer(SwinTransformer):
    """Swin v1: ``forward(x)`` maps (B, 3, H, W) to ``{"stage2".."stage5": (B, C_i, H_i, W_i)}``.

    ``C_i = embed_dim * 2**i``, ``H_i = ceil(H / 2**(i+2))``; only ``out_features`` are returned.
    Stage2 is raw (no norm); stages 3-5 pass through LayerNorms ``norm1..norm3``.
    """

    def __init__(
        self,
        *,
        patch_size=4,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        drop_path_rate=0.2,
        out_features=("stage3", "stage4", "stage5"),
        freeze_at=-1,
        use_checkpoint=False,
    ):
        """
        Args:
            freeze_at (int): official FREEZE_CONV_BODY_AT: -1 freezes nothing, >= 0 freezes the
                patch embedding, N >= 2 also freezes the first N-1 stages.
            use_checkpoint (bool): recompute each block in backward (saves memory).
        """
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"Swin needs 4 stages; got DEPTHS={list(depths)} NUM_HEADS={list(num_heads)}"
            )
        for name in out_features:
            if name not in _STAGE_NAMES:
                raise ValueError(
                    f"unknown Swin output feature {name!r}; choose from {_STAGE_NAMES}"
                )
        # The parent builds norm1..norm3 only (out_indices 1..3); drop path is installed
        # below because the parent's implementation needs timm.
        super().__init__(
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=0.0,
            out_indices=(1, 2, 3),
            frozen_stages=-1,
            use_checkpoint=False,
        )
        self.norm0 = nn.Identity()
        self.window_size = window_size
        self.frozen_stages = freeze_at
        self.use_checkpoint = use_checkpoint

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        blocks = [blk for layer in self.layers for blk in layer.blocks]
        for blk, rate in zip(blocks, rates, strict=True):
            blk.drop_path = DropPath(rate) if rate > 0.0 else nn.Identity()
            # Recomputable from the window size: keep it out of checkpoints (official files
            # carry it; the converter drops it).
            index = blk.attn.relative_position_index
            del blk.attn.relative_position_index
            blk.attn.register_buffer("relative_position_index", index, persistent=False)

        self._out_features = list(out_features)
        all_channels = {n: embed_dim * 2**i for i, n in enumerate(_STAGE_NAMES)}
        self._out_feature_channels = {n: all_channels[n] for n in out_features}
        self._out_feature_strides = {n: patch_size * 2**i for i, n in enumerate(_STAGE_NAMES)}
        self._out_feature_strides = {n: self._out_feature_strides[n] for n in out_features}
        self._freeze_stages()

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed] + list(self.layers[: max(self.frozen_stages - 1, 0)])

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        # Frozen stages stay deterministic (no drop path) in training, as officially.
        for module in self._frozen_modules():
            module.eval()
        return self

    def _run_stage(self, layer, x, H, W):
        # Integer arithmetic (not math.ceil): a traced graph keeps it as a function of the size.
        Hp = (H + self.window_size - 1) // self.window_size * self.window_size
        Wp = (W + self.window_size - 1) // self.window_size * self.window_size
        mask = shifted_window_mask(Hp, Wp, self.window_size, self.window_size // 2, x.device)
        mask = mask.to(x.dtype)
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for blk in layer.blocks:
            blk.H, blk.W = H, W
            if recompute:
                x = cp.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return x

    def forward(self, x):
        """
        Args:
            x: (B, 3, H, W) normalized images (H, W padded to a multiple of 32 by the model).
        Returns:
            dict[str, Tensor]: the requested ``stage2..stage5`` maps, (B, C_i, H_i, W_i).
        """
        if x.dim() != 4 or x.shape[1] != self.patch_embed.in_chans:
            raise ValueError(f"Swin expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        H, W = x.shape[2], x.shape[3]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = {}
        last = max(_STAGE_NAMES.index(n) for n in self._out_features)
        for i, layer in enumerate(self.layers[: last + 1]):
            x = self._run_stage(layer, x, H, W)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(x)
                outputs[name] = out.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2)
            if i < last:
                x = layer.downsample(x, H, W)
                H, W = (H + 1) // 2, (W + 1) // 2
        return {k: v.contiguous() for k, v in outputs.items()}


@BACKBONE_REGISTRY.register()
def build_glip_swin_backbone(cfg, input_shape: ShapeSpec):
    """Swin from ``cfg.MODEL.SWIN`` (without FPN); outputs ``cfg.MODEL.SWIN.OUT_FEATURES``."""
    s = cfg.MODEL.SWIN
    if input_shape.channels != 3:
        raise ValueError(f"Swin expects 3 input channels, got {input_shape.channels}")
    return GLIPSwinTransformer(
        patch_size=s.PATCH_SIZE,
        embed_dim=s.EMBED_DIM,
        depths=s.DEPTHS,
        num_heads=s.NUM_HEADS,
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        drop_path_rate=s.DROP_PATH_RATE,
        out_features=s.OUT_FEATURES,
        freeze_at=s.FREEZE_AT,
        use_checkpoint=s.USE_CHECKPOINT,
    )
