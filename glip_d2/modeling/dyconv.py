"""DyConv: the visual layer of DyHead as used by GLIP.

Official counterpart: microsoft/GLIP maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``DyConv``
(docs/OFFICIAL_BEHAVIOURS.md, "DyConv offset reuse").

Each output level mixes three 3x3 convolutions: of the same level, of the finer level (stride
2) and of the coarser level (upsampled), weighted by scale attention, then applies DyReLU.
The convolutions are modulated deformable convs whose offsets and masks are predicted from the
current level, and the coarser-level conv reuses that memory with the official indexing quirk.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

from .deform_conv import modulated_deform_conv3x3

__all__ = [
    "DEFORM_CONV_IMPLS",
    "HSigmoid",
    "DyReLU",
    "ModulatedDeformConv3x3",
    "Conv3x3Norm",
    "DyConv",
]


class HSigmoid(nn.Module):
    """Hard sigmoid ``ReLU6(x + 3) / 6``."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


def _make_divisible(value, divisor=4):
    # Round to the nearest multiple of `divisor`, never below 90% of `value` (MobileNet rule,
    # used by the official DyReLU for its squeeze width).
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class DyReLU(nn.Module):
    """Dynamic ReLU with two learned linear pieces per channel, ``max(x a1 + b1, x a2 + b2)``.

    The coefficients come from the global average of the input through
    ``fc`` = Linear(C, C/4) -> ReLU -> Linear(C/4, 4C) -> h-sigmoid.
    """

    def __init__(self, channels, reduction=4):
        super().__init__()
        squeeze = _make_divisible(channels // reduction, 4)
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(channels, squeeze),
            nn.ReLU(inplace=True),
            nn.Linear(squeeze, 4 * channels),
            HSigmoid(),
        )

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c = x.shape[:2]
        coeffs = self.fc(x.mean(dim=(2, 3))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(coeffs, c, dim=1)
        # Official init_a = (1, 0), init_b = (0, 0), lambda_a = 2: slopes start near 1 and 0.
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.max(x * a1 + b1, x * a2 + b2)


DEFORM_CONV_IMPLS = ("fast", "torchvision")


class ModulatedDeformConv3x3(DeformConv2d):
    """Modulated deformable 3x3 conv (padding 1) with torchvision's ``deform_conv2d`` semantics.

    ``offset`` (B, 18, H_out, W_out) holds (dy, dx) pairs per kernel tap in row-major tap
    order and ``mask`` (B, 9, H_out, W_out) the modulation, the official layout.

    ``impl="fast"`` gathers the 9 taps and does one matrix product
    (glip_d2/modeling/deform_conv.py); ``impl="torchvision"`` calls
    ``torchvision.ops.deform_conv2d``, the reference it is tested against. Both evaluate in
    (at least) fp32 like the official op; with ``low_precision`` the fast path runs its samples
    and matrix product in autocast's dtype when autocast is on (positions stay fp32) and then
    returns that dtype, like any autocast convolution. Non-finite offsets or masks raise a
    ``FloatingPointError`` naming ``name`` (torchvision's CPU kernel crashes on NaN offsets).
    """

    def __init__(self, in_channels, out_channels, stride=1, *, impl="fast", low_precision=False):
        if impl not in DEFORM_CONV_IMPLS:
            raise ValueError(
                f"deformable conv impl must be one of {DEFORM_CONV_IMPLS} "
                f"(MODEL.GLIP.DEFORM_CONV_IMPL), got {impl!r}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True
        )
        self.impl = impl
        self.low_precision = low_precision
        self.name = type(self).__name__  # DyConv sets the module path, for error messages

    def reset_parameters(self):
        super().reset_parameters()
        # The official op initialises the weight uniformly in +-1/sqrt(fan_in) (as above) and
        # the bias to zero.
        nn.init.zeros_(self.bias)

    def forward(self, x, offset, mask):
        """x (B, C_in, H, W), offset (B, 18, H_out, W_out), mask (B, 9, H_out, W_out)."""
        if not torch.jit.is_tracing() and not (
            torch.isfinite(offset).all() and torch.isfinite(mask).all()
        ):
            raise FloatingPointError(
                f"{self.name}: non-finite (NaN or inf) deformable-conv offsets or mask of shape "
                f"{tuple(offset.shape)}; the input features are "
                f"{'finite' if torch.isfinite(x).all() else 'not finite either'}"
            )
        dtype = x.dtype
        # Sampling positions lose precision in half precision; the official op is fp32 too.
        compute = torch.promote_types(dtype, torch.float32)
        device = x.device.type
        if self.impl == "fast" and self.low_precision and torch.is_autocast_enabled(device):
            compute = dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device_type=device, enabled=False):
            if self.impl == "fast":
                out = modulated_deform_conv3x3(
                    x, offset, mask, self.weight, self.bias, self.stride[0], compute
                )
            else:
                out = deform_conv2d(
                    x.to(compute),
                    offset.to(compute),
                    self.weight.to(compute),
                    self.bias.to(compute),
                    stride=self.stride,
                    padding=self.padding,
                    dilation=self.dilation,
                    mask=mask.to(compute),
                )
        return out.to(dtype)


class Conv3x3Norm(nn.Module):
    """3x3 conv (deformable or plain, with bias) followed by GroupNorm (``conv``, ``bn``)."""

    def __init__(
        self, in_channels, out_channels, stride, deformable, num_groups=16, **deform_options
    ):
        """
        num_groups: GroupNorm groups; 0 for no normalisation.
        deform_options: ``impl`` and ``low_precision`` of ModulatedDeformConv3x3.
        """
        super().__init__()
        self.deformable = deformable
        if deformable:
            self.conv = ModulatedDeformConv3x3(in_channels, out_channels, stride, **deform_options)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(num_groups, out_channels) if num_groups else None

    def forward(self, x, offset=None, mask=None):
        x = self.conv(x, offset, mask) if self.deformable else self.conv(x)
        return self.bn(x) if self.bn is not None else x


class DyConv(nn.Module):
    """One DyHead visual layer over the 5 pyramid levels.

    Submodules (official names): ``DyConv.{0,1,2}`` convs for the coarser, same and finer
    level (the finer one with stride 2); ``AttnConv`` scale attention (GAP -> 1x1 conv -> ReLU,
    then h-sigmoid); ``relu`` DyReLU; ``offset`` the 27-channel offset/mask predictor.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        use_dfconv=True,
        use_dyfuse=True,
        use_dyrelu=True,
        gn_groups=16,
        deform_conv_impl="fast",
        deform_conv_low_precision=False,
        name="DyConv",
    ):
        """
        Args:
            deform_conv_impl, deform_conv_low_precision: ``impl`` and ``low_precision`` of the
                deformable convs (ModulatedDeformConv3x3).
            name (str): this module's path in the model, named by errors.
        """
        super().__init__()
        self.name = name
        options = {"impl": deform_conv_impl, "low_precision": deform_conv_low_precision}
        self.DyConv = nn.ModuleList(
            [
                Conv3x3Norm(in_channels, out_channels, s, use_dfconv, gn_groups, **options)
                for s in (1, 1, 2)
            ]
        )
        for k, conv in enumerate(self.DyConv):
            if use_dfconv:
                conv.conv.name = f"{name}.DyConv.{k}.conv"
        if use_dyfuse:
            self.AttnConv = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(in_channels, 1, kernel_size=1),
                nn.ReLU(inplace=True),
            )
            self.h_sigmoid = HSigmoid()
        else:
            self.AttnConv = None
        self.relu = DyReLU(out_channels) if use_dyrelu else nn.ReLU()
        self.offset = nn.Conv2d(in_channels, 27, kernel_size=3, padding=1) if use_dfconv else None
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features):
        """
        Args:
            features (list[Tensor]): per level (B, C_in, H_l, W_l), finest first, each level
                ceil-half the size of the previous one.
        Returns:
            list[Tensor]: per level (B, C_out, H_l, W_l).
        """
        outputs = []
        num_levels = len(features)
        for level, x in enumerate(features):
            b, _, h, w = x.shape
            offset = mask = coarse_offset = coarse_mask = None
            if self.offset is not None:
                om = self.offset(x)
                offset, mask = om[:, :18], om[:, 18:].sigmoid()
                if level < num_levels - 1:
                    ch, cw = features[level + 1].shape[-2:]
                    # The official CUDA op reads this level's offset/mask memory as if it had
                    # the coarser level's size: each image's leading values, reshaped.
                    coarse_offset = offset.reshape(b, -1)[:, : 18 * ch * cw].reshape(b, 18, ch, cw)
                    coarse_mask = mask.reshape(b, -1)[:, : 9 * ch * cw].reshape(b, 9, ch, cw)

            try:
                terms = [self.DyConv[1](x, offset, mask)]
                if level > 0:
                    terms.append(self.DyConv[2](features[level - 1], offset, mask))
                if level < num_levels - 1:
                    coarse = self.DyConv[0](features[level + 1], coarse_offset, coarse_mask)
                    terms.append(
                        F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
                    )
            except FloatingPointError as err:
                # The offsets of `level` come from that level's features (finest = 0).
                raise FloatingPointError(
                    f"{err} (offsets predicted at level {level} of {num_levels}, "
                    f"features {tuple(x.shape)})"
                ) from None

            stacked = torch.stack(terms)
            if self.AttnConv is not None:
                attn = self.h_sigmoid(torch.stack([self.AttnConv(t) for t in terms]))
                stacked = stacked * attn
            outputs.append(stacked.mean(dim=0))
        return [self.relu(y) for y in outputs]
