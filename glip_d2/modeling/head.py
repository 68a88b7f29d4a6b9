"""VLDyHead: GLIP's fused DyHead tower and prediction layers (microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``VLDyHead``).

The tower has ``NUM_LAYERS`` layers; each is (with early fusion) a vision-language fusion
block, a BERT layer on the text path and a DyConv on the visual path. The prediction layers
read the final visual features and score every location against every token with a
normalised dot product.
"""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..structures import TextFeatures
from .clamp import clamp_abs
from .dyconv import DyConv
from .fusion import VLFusionBlock
from .text_layer import ClampedBertLayer, TextLayerConfig

__all__ = [
    "GLIP_HEAD_REGISTRY",
    "build_glip_head",
    "flatten_levels",
    "Scale",
    "VLDyHeadLayer",
    "VLDyHead",
]

GLIP_HEAD_REGISTRY = Registry("GLIP_HEAD")
GLIP_HEAD_REGISTRY.__doc__ = """
Registry for GLIP's vision-language detection heads. The registered object is called with
``(cfg, input_shape, lang_config=...)`` and returns an ``nn.Module`` with the forward contract
of ``VLDyHead``.
"""


def build_glip_head(cfg, input_shape, lang_config=None):
    """Build the head named by ``cfg.MODEL.GLIP.HEAD_NAME`` (default "VLDyHead").

    Args:
        input_shape (list[ShapeSpec]): the backbone's output shapes of P3..P7, in stride order.
        lang_config: the text encoder's config (a transformers ``PretrainedConfig`` or a dict);
            None derives BERT-family sizes from ``MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE``.
    """
    name = cfg.MODEL.GLIP.HEAD_NAME
    return GLIP_HEAD_REGISTRY.get(name)(cfg, input_shape, lang_config=lang_config)


def flatten_levels(maps):
    """Dense per-level maps -> one (B, N, C) tensor, the layout of every head output.

    Args:
        maps (list[Tensor]): per level (B, C, H_l, W_l).
    Returns:
        Tensor: (B, sum_l H_l*W_l, C), locations row-major within a level, levels in order
        (the order of the anchors; detectron2's dense detectors transpose the same way).
    """
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


class Scale(nn.Module):
    """A learned scalar multiplier (parameter ``scale``, shape (1,))."""

    def __init__(self, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x):
        return x * self.scale


class VLDyHeadLayer(nn.Module):
    """One tower layer: ``fusion`` (optional), ``text_layer`` (optional), ``dyconv``."""

    def __init__(self, fusion, text_layer, dyconv):
        super().__init__()
        if fusion is not None:
            self.fusion = fusion
        if text_layer is not None:
            self.text_layer = text_layer
        self.dyconv = dyconv

    def forward(self, features, hidden, text_mask, stage_outputs=None):
        """Returns (features, hidden); appends one dict per stage to ``stage_outputs``."""
        if hasattr(self, "fusion"):
            features, hidden = self.fusion(features, hidden, text_mask)
            if stage_outputs is not None:
                stage_outputs.append({"type": "fusion", "visual": features, "lang_hidden": hidden})
        if hasattr(self, "text_layer"):
            hidden = self.text_layer(hidden, text_mask)
            if stage_outputs is not None:
                stage_outputs.append({"type": "text_layer", "lang_hidden": hidden})
        features = self.dyconv(features)
        if stage_outputs is not None:
            stage_outputs.append({"type": "dyconv", "visual": features})
        return features, hidden


@GLIP_HEAD_REGISTRY.register()
class VLDyHead(nn.Module):
    """GLIP's head (official ``VLDyHead`` with the dot-product token classifier).

    Forward contract (docs/DESIGN.md): ``head(features, text)`` with ``features`` the 5 maps
    P3..P7 (B, C_in, H_l, W_l) and ``text`` a :class:`TextFeatures` returns ``logits``
    (B, N, L), ``bbox_reg`` (B, N, 4) and ``centerness`` (B, N, 1), N = sum_l H_l*W_l in level
    order (:func:`flatten_levels`).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels,
        channels,
        num_layers,
        text_config,
        early_fuse=True,
        use_fused_features_dot_product=True,
        use_dfconv=True,
        use_dyfuse=True,
        use_dyrelu=True,
        gn_groups=16,
        fusion_embed_dim=2048,
        fusion_num_heads=8,
        fusion_dropout=0.1,
        prior_prob=0.01,
        log_scale=0.0,
        clamp_value=50000.0,
        num_levels=5,
        use_checkpoint=False,
        fusion_impl="auto",
        deform_conv_impl="fast",
        deform_conv_low_precision=False,
        fusion_layer_scale=None,
        text_layer_zero_init=False,
    ):
        """
        Args:
            in_channels (int): FPN width.
            channels (int): head width; also the fusion's visual width.
            num_layers (int): tower layers.
            text_config (TextLayerConfig): sizes of the text encoder (and the head's BERT layers).
            early_fuse (bool): add a fusion block and a BERT layer before every DyConv.
            use_fused_features_dot_product (bool): score tokens with the tower's final text
                features; False scores the encoder's ``embedded`` features (GLIP-A), and then
                the last layer has no BERT layer (the official DummyLayer).
            use_dfconv, use_dyfuse, use_dyrelu (bool): DyConv options; in layer 0 they are
                switched off when in_channels != channels (official rule).
            gn_groups (int): GroupNorm groups in DyConv (0: no norm).
            fusion_embed_dim, fusion_num_heads, fusion_dropout: fusion attention settings.
            prior_prob (float): initial token probability (bias0 = -log((1-p)/p)).
            log_scale (float): initial log temperature of the dot product.
            clamp_value (float): bound of every official +-50000 clamp.
            num_levels (int): pyramid levels (one ``scales`` entry each).
            use_checkpoint (bool): recompute each tower layer in backward (training memory).
            fusion_impl (str): product order of the fusion attention (BiMultiHeadAttention).
            deform_conv_impl, deform_conv_low_precision: DyConv's deformable convs.
            fusion_layer_scale (float or None): initial gamma_v / gamma_l of the fusion blocks;
                None: the official 1 / num_layers.
            text_layer_zero_init (bool): start each text layer with zero output projections
                (:meth:`ClampedBertLayer.zero_residual_branches`), i.e. close to the identity.
        """
        super().__init__()
        hidden_size = text_config.hidden_size
        self.use_fused_features_dot_product = use_fused_features_dot_product
        self.clamp_value = clamp_value
        self.use_checkpoint = use_checkpoint

        layers = []
        for i in range(num_layers):
            fusion = text_layer = None
            if early_fuse:
                fusion = VLFusionBlock(
                    channels if i > 0 else in_channels,
                    hidden_size,
                    fusion_embed_dim,
                    fusion_num_heads,
                    dropout=fusion_dropout,
                    init_layer_scale=(
                        1.0 / num_layers if fusion_layer_scale is None else fusion_layer_scale
                    ),
                    clamp_value=clamp_value,
                    impl=fusion_impl,
                )
                if i < num_layers - 1 or use_fused_features_dot_product:
                    text_layer = ClampedBertLayer(text_config, clamp_value)
            full = i > 0 or in_channels == channels
            dyconv = DyConv(
                channels if i > 0 else in_channels,
                channels,
                use_dfconv=use_dfconv and full,
                use_dyfuse=use_dyfuse and full,
                use_dyrelu=use_dyrelu and full,
                gn_groups=gn_groups,
                deform_conv_impl=deform_conv_impl,
                deform_conv_low_precision=deform_conv_low_precision,
                name=f"head.tower.{i}.dyconv",
            )
            layers.append(VLDyHeadLayer(fusion, text_layer, dyconv))
        self.tower = nn.ModuleList(layers)
        self.text_layer_zero_init = text_layer_zero_init
        if text_layer_zero_init:
            for text_layer in self._text_layers():
                text_layer.zero_residual_branches()

        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

        self.dot_product_projection_text = nn.Linear(hidden_size, channels)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale)]))
        self.bias_lang = nn.Parameter(torch.zeros(hidden_size))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1.0 - prior_prob) / prior_prob)]))

    @classmethod
    def from_config(cls, cfg, input_shape, lang_config=None):
        """
        Args:
            input_shape (list[ShapeSpec]): the feature levels (the backbone's
                ``output_shape()`` in stride order); they give the input width and level count.
            lang_config: the text encoder's config (transformers config or dict), a
                ``TextLayerConfig``, or None for BERT-family sizes of
                ``MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE``.
        """
        g = cfg.MODEL.GLIP
        if lang_config is None:
            text_config = TextLayerConfig.for_hidden_size(cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE)
        elif isinstance(lang_config, TextLayerConfig):
            text_config = lang_config
        else:
            text_config = TextLayerConfig.from_hf(lang_config)
        if text_config.hidden_size != cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE:
            raise ValueError(
                f"text encoder hidden size {text_config.hidden_size} != "
                f"MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE={cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE}"
            )
        widths = {s.channels for s in input_shape}
        if len(widths) != 1:
            raise ValueError(f"VLDyHead needs feature levels of one width, got {input_shape}")
        return {
            "in_channels": widths.pop(),
            "channels": g.CHANNELS,
            "num_layers": g.NUM_LAYERS,
            "text_config": text_config,
            "early_fuse": g.EARLY_FUSE,
            "use_fused_features_dot_product": g.USE_FUSED_FEATURES_DOT_PRODUCT,
            "use_dfconv": g.USE_DFCONV,
            "use_dyfuse": g.USE_DYFUSE,
            "use_dyrelu": g.USE_DYRELU,
            "gn_groups": g.GN_GROUPS if g.USE_GN else 0,
            "fusion_embed_dim": g.FUSION_EMBED_DIM,
            "fusion_num_heads": g.FUSION_NUM_HEADS,
            "fusion_dropout": g.FUSION_DROPOUT,
            "prior_prob": g.PRIOR_PROB,
            "log_scale": g.LOG_SCALE,
            "clamp_value": g.CLAMP_VALUE,
            "num_levels": len(input_shape),
            "use_checkpoint": g.USE_CHECKPOINT,
            "fusion_impl": g.FUSION_IMPL,
            "deform_conv_impl": g.DEFORM_CONV_IMPL,
            "deform_conv_low_precision": g.DEFORM_CONV_LOW_PRECISION,
            "fusion_layer_scale": None if g.FUSION_LAYER_SCALE < 0 else g.FUSION_LAYER_SCALE,
            "text_layer_zero_init": g.TEXT_LAYER_ZERO_INIT,
        }

    def _text_layers(self):
        return [layer.text_layer for layer in self.tower if hasattr(layer, "text_layer")]

    def init_text_layers_from(self, encoder_layers, indices):
        """Copy text-encoder layers into the tower's text layers, in tower order.

        The official head's text layers start random (pretraining then trains them); training
        from scratch, a copy of pretrained encoder layers starts them with the encoder's token
        features kept apart (``MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER``). With
        ``text_layer_zero_init`` the copies' output projections are zeroed again.

        Args:
            encoder_layers (nn.ModuleList): the text encoder's layers (HF ``encoder.layer``),
                whose parameter names :class:`ClampedBertLayer` shares.
            indices (list[int]): the encoder layer copied into each text layer of the tower.
        """
        targets = self._text_layers()
        if len(indices) != len(targets):
            raise ValueError(
                f"MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER={list(indices)} needs one encoder layer "
                f"index per text layer of the head, which has {len(targets)}"
            )
        n = len(encoder_layers)
        for target, i in zip(targets, indices, strict=True):
            if not -n <= i < n:
                raise ValueError(
                    f"MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER: layer {i} not in the text encoder's "
                    f"{n} layers"
                )
            target.load_state_dict(encoder_layers[i].state_dict())
            if self.text_layer_zero_init:
                target.zero_residual_branches()

    def forward(self, features, text, stage_outputs=None):
        """
        Args:
            features (list[Tensor]): P3..P7, each (B, C_in, H_l, W_l).
            text (TextFeatures): ``hidden``, ``embedded`` (B, L, D) and ``mask`` (B, L).
            stage_outputs (list or None): when given, receives one dict per tower stage in
                official tower order (``type`` "fusion" / "text_layer" / "dyconv", with
                ``visual`` and/or ``lang_hidden``), for debugging and parity tests.
        Returns:
            dict: ``logits`` (B, N, L) clamped dot-product token logits, ``bbox_reg`` (B, N, 4)
            box deltas after the per-level scales, ``centerness`` (B, N, 1) logits; N runs over
            the locations of P3..P7 (:func:`flatten_levels`).
        """
        if len(features) != len(self.scales):
            raise ValueError(
                f"VLDyHead expects {len(self.scales)} feature levels, got {len(features)}"
            )
        if not isinstance(text, TextFeatures):
            raise TypeError(f"VLDyHead expects TextFeatures, got {type(text).__name__}")
        hidden, text_mask = text.hidden, text.mask
        features = list(features)
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for layer in self.tower:
            if recompute and stage_outputs is None:
                # Non-reentrant checkpointing replays the saved RNG state, so fusion dropout
                # draws the same masks in the recomputation.
                features, hidden = checkpoint(
                    layer, features, hidden, text_mask, use_reentrant=False
                )
            else:
                features, hidden = layer(features, hidden, text_mask, stage_outputs)

        tokens = hidden if self.use_fused_features_dot_product else text.embedded
        tokens = F.normalize(tokens, p=2, dim=-1)
        proj_tokens = self.dot_product_projection_text(tokens / 2.0)  # (B, L, C)
        token_bias = torch.matmul(tokens, self.bias_lang) + self.bias0  # (B, L)
        temperature = self.log_scale.exp()

        logits, bbox_reg, centerness = [], [], []
        for level, x in enumerate(features):
            queries = x.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major locations
            logit = (
                torch.matmul(queries, proj_tokens.transpose(-1, -2)) / temperature
                + token_bias[:, None, :]
            )
            logits.append(clamp_abs(logit, self.clamp_value))
            bbox_reg.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
        return {
            "logits": torch.cat(logits, dim=1),
            "bbox_reg": flatten_levels(bbox_reg),
            "centerness": flatten_levels(centerness),
        }
