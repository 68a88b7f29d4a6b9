"""``TextFeatures``: the text encoder's output as the fused head consumes it.

A batch of prompts shares one token length L: each prompt's real tokens ([CLS], word pieces,
[SEP]) come first, then padding up to L (``mask`` 0). L is the longest prompt of the batch
(``MODEL.LANGUAGE_BACKBONE.PAD_TO_MAX`` False, the default) or MAX_QUERY_LEN (True, the official
layout); padded tokens never influence a real token, a visual feature, a detection or a loss
(docs/DESIGN.md, "Text length"), so the two give the same results up to float rounding.
"""

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

    @property
    def length(self):
        """L, the token length shared by the batch."""
        return self.hidden.shape[1]

    def real_length(self):
        """The smallest length that keeps every attended token: last attended column + 1."""
        attended = torch.nonzero(self.mask.any(dim=0))
        return int(attended.max()) + 1 if attended.numel() else 1

    def trim(self):
        """The same prompts without the columns after the last attended token (a view)."""
        n = self.real_length()
        if n == self.length:
            return self
        return TextFeatures(self.hidden[:, :n], self.embedded[:, :n], self.mask[:, :n])

    def split(self):
        """One (1, l_i, ...) copy per prompt, each trimmed to its own attended tokens."""
        return [self[i : i + 1].trim().clone() for i in range(len(self))]

    def __getitem__(self, index):
        """Prompts ``index`` (a slice) as a view."""
        if not isinstance(index, slice):
            raise TypeError(f"TextFeatures[...] takes a slice, got {type(index).__name__}")
        return TextFeatures(self.hidden[index], self.embedded[index], self.mask[index])

    def clone(self):
        return TextFeatures(self.hidden.clone(), self.embedded.clone(), self.mask.clone())

    @classmethod
    def cat(cls, items, length=None):
        """Concatenate prompts, padding each to a common length.

        Args:
            items (list[TextFeatures]): (B_i, l_i, D) each.
            length (int or None): the common length (default: the longest ``l_i``); padded
                rows are zeros with mask 0.
        Returns:
            TextFeatures: (sum B_i, length, D).
        """
        if not items:
            raise ValueError("TextFeatures.cat needs at least one item")
        length = max(t.length for t in items) if length is None else int(length)
        if any(t.length > length for t in items):
            raise ValueError(
                f"TextFeatures.cat: length {length} < {max(t.length for t in items)} tokens"
            )

        def pad(x, n):
            if n == 0:
                return x
            return torch.cat([x, x.new_zeros((x.shape[0], n) + tuple(x.shape[2:]))], dim=1)

        fields = [
            torch.cat([pad(getattr(t, name), length - t.length) for t in items])
            for name in ("hidden", "embedded", "mask")
        ]
        return cls(*fields)

    def to(self, device):
        return TextFeatures(self.hidden.to(device), self.embedded.to(device), self.mask.to(device))
