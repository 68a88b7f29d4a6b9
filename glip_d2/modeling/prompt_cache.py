"""``TextFeatureCache``: the text encoder's output per prompt string, kept between inference
calls, so that a video or an image list with one vocabulary (or the chunks of a large one)
is encoded once.

Rule (docs/DESIGN.md, "Prompt cache"): an entry is valid for one text encoder in one state.
Every lookup compares a fingerprint of the language backbone (the module's identity, the
storage and version counter of each parameter and buffer, and the autocast dtype) with the
one the entries were made under, and empties the cache when it differs. Optimizer steps,
``load_state_dict``, checkpoint loading, EMA swaps and ``.to()`` all change it. Writes through
``.data`` bypass PyTorch's version counters: call :meth:`TextFeatureCache.clear` after those.
The detector consults a cache only at inference with gradients off (never in training).
"""

from collections import OrderedDict

import torch

from ..structures import TextFeatures

__all__ = ["TextFeatureCache"]


def _fingerprint(module, device):
    tensors = list(module.parameters()) + list(module.buffers())
    autocast = (
        torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    )
    return (
        id(module),
        str(device),
        autocast,
        # Inference tensors (a model built under torch.inference_mode) have no version counter.
        tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype) for t in tensors),
    )


class TextFeatureCache:
    """LRU map from a prompt string to its (1, l, D) text features (l: its own tokens)."""

    def __init__(self, max_size=64):
        """
        Args:
            max_size (int): prompts kept; the least recently used is dropped first; 0 keeps
                nothing (every call encodes).
        """
        if int(max_size) < 0:
            raise ValueError(f"MODEL.GLIP.PROMPT_CACHE_SIZE must be >= 0, got {max_size}")
        self.max_size = int(max_size)
        self._entries = OrderedDict()
        self._fingerprint = None
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._entries)

    def __contains__(self, caption):
        return caption in self._entries

    def clear(self):
        self._entries.clear()
        self._fingerprint = None

    def encode(self, language_backbone, captions, device):
        """Text features of ``captions``, encoding only those not cached.

        Args:
            language_backbone: the detector's text encoder (``tokenize``, forward,
                ``max_query_len``, ``pad_to_max``).
            captions (list[str]): distinct prompts.
            device: where the tokens go.
        Returns:
            TextFeatures: (len(captions), L, D) in ``captions`` order; L is the longest
            caption's token count (MAX_QUERY_LEN with ``pad_to_max``), padding rows zero.
        """
        device = torch.device(device)
        fingerprint = _fingerprint(language_backbone, device)
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint
        missing = [c for c in captions if c not in self._entries]
        self.hits += len(captions) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            tokens = language_backbone.tokenize(missing, device=device)
            encoded = language_backbone(tokens["input_ids"], tokens["attention_mask"])
            fresh = dict(zip(missing, encoded.split(), strict=True))
        # Collect every item before storing the new ones: storing may evict a cached prompt
        # that a later position of this same call still needs.
        items = [fresh[c] if c in fresh else self._entries[c] for c in captions]
        for caption in captions:
            if caption not in fresh:
                self._entries.move_to_end(caption)
        if self.max_size > 0:
            self._entries.update(fresh)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
        length = language_backbone.max_query_len if language_backbone.pad_to_max else None
        return TextFeatures.cat(items, length)
