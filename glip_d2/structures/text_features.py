"""``TextFeatures``: the text encoder's output as the fused head consumes it."""

from dataclasses import dataclass

import torch

__all__ = ["TextFeatures"]


@dataclass
class TextFeatures:
    """Token features of a batch of prompts (official ``language_dict_features``).

    Attributes:
        hidden (Tensor): (B, L, D) last-layer token features, pad rows not zeroed; the fusion
            tower updates them.
        embedded (Tensor): (B, L, D) the same with pad rows zeroed; GLIP-T (A) scores tokens
            with these instead of the fused ``hidden``.
        mask (Tensor): (B, L) integer attention mask, 1 for [CLS], word pieces and [SEP], 0 for
            [PAD]. Everything downstream calls it ``text_mask``.
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.hidden.dim() != 3 or self.embedded.shape != self.hidden.shape:
            raise ValueError(
                f"TextFeatures: hidden {tuple(self.hidden.shape)} and embedded "
                f"{tuple(self.embedded.shape)} must both be (B, L, D)"
            )
        if self.mask.shape != self.hidden.shape[:2]:
            raise ValueError(
                f"TextFeatures: mask {tuple(self.mask.shape)} must be (B, L) = "
                f"{tuple(self.hidden.shape[:2])}"
            )

    def __len__(self):
        return self.hidden.shape[0]

    def index_select(self, index):
        """The prompts ``index`` ((J,) int64 tensor), in that order: a (J, L, ...) copy."""
        return TextFeatures(
            self.hidden.index_select(0, index),
            self.embedded.index_select(0, index),
            self.mask.index_select(0, index),
        )

    def to(self, device):
        return TextFeatures(self.hidden.to(device), self.embedded.to(device), self.mask.to(device))
