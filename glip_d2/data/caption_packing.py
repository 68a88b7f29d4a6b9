"""Caption packing: a pseudo-labelled caption shares its prompt with other captions as negatives.

The official caption loader (microsoft/GLIP maskrcnn_benchmark/data/datasets/caption.py,
``CaptionTSV.__getitem__`` and ``CaptionTSV.pack_caption``) trains each image-caption pair with
captions of other images of the same set appended: their words get no box, so the model learns
that a phrase in the prompt need not be in the image, as detection prompts teach with negative
class names. glip_d2 reproduces it with these config keys (defaults: the official GLIP-L
pre-training config, configs/pretrain/glip_Swin_L.yaml):

* ``DATASETS.GLIP.PACK_RANDOM_CAPTION_NUMBER`` (N = 20; 0 turns packing off);
* ``DATASETS.GLIP.NO_RANDOM_PACK_PROBABILITY`` (0.4): no negative at all; otherwise
  ``DATASETS.GLIP.RANDOM_PACK_PROB`` (0.5): N negatives, else a uniform number in 0..N-1
  (``RANDOM_PACK_PROB`` -1: always N). Each of the two tests draws its own random number.
* Negatives are drawn uniformly with replacement from the set's captions (the image's own
  caption may come back, as in the official loader).
* Official safeguard (``SAFEGUARD_POSITIVE_CAPTION``, always on here): a caption's length is
  its token count with [CLS] and [SEP]; in random order, a negative is kept when its length is
  below what ``MAX_QUERY_LEN`` minus the positive caption's length (minus the negatives kept so
  far) leaves, so the positive caption is never truncated.
* The kept captions and the positive one are shuffled; each is followed by "." (unless it ends
  with one) and a space; the positive caption's phrase spans move by its offset.

Deviation: the official code finds the positive caption in the shuffled list by its text, so a
negative with the same text as the positive one would take its boxes; here it is found by
position. The pool holds the captions of the set's records after screening (the official pool
is the whole caption file). Not reproduced: ``SAMPLE_NEGATIVE_FOR_GROUNDING_DATA`` (replace the
caption by a negative and drop the boxes; off in the official configs).
"""

__all__ = ["CaptionPacker"]


class CaptionPacker:
    """Packs the caption of a record of a caption set with negatives from the same set."""

    def __init__(
        self,
        pools,
        tokenizer,
        *,
        max_query_len=256,
        pack_number=20,
        random_pack_prob=0.5,
        no_random_pack_prob=0.4,
    ):
        """
        Args:
            pools (dict[str, list[str]]): dataset name -> the captions of its records; records
                of other datasets are not packed.
            tokenizer: the text encoder's tokenizer (caption lengths).
            max_query_len (int): ``MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN``.
            pack_number (int): N, the most negatives (``PACK_RANDOM_CAPTION_NUMBER``).
            random_pack_prob (float): ``RANDOM_PACK_PROB`` (-1: always N).
            no_random_pack_prob (float): ``NO_RANDOM_PACK_PROBABILITY``.
        """
        empty = [name for name, pool in pools.items() if not pool]
        if empty:
            raise ValueError(f"caption sets without captions to pack: {empty}")
        if pack_number < 0:
            raise ValueError(
                f"DATASETS.GLIP.PACK_RANDOM_CAPTION_NUMBER must be >= 0, got {pack_number}"
            )
        self.pools = {name: list(pool) for name, pool in pools.items()}
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.pack_number = pack_number
        self.random_pack_prob = random_pack_prob
        self.no_random_pack_prob = no_random_pack_prob

    @classmethod
    def from_config(cls, cfg, pools, tokenizer):
        g = cfg.DATASETS.GLIP
        return cls(
            pools,
            tokenizer,
            max_query_len=cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
            pack_number=g.PACK_RANDOM_CAPTION_NUMBER,
            random_pack_prob=g.RANDOM_PACK_PROB,
            no_random_pack_prob=g.NO_RANDOM_PACK_PROBABILITY,
        )

    def number_of_negatives(self, rng):
        """How many negatives to draw (official ``CaptionTSV.__getitem__``)."""
        n = self.pack_number
        if n == 0 or self.random_pack_prob == -1.0:
            return n
        if rng.random() < self.no_random_pack_prob:
            return 0
        if rng.random() < self.random_pack_prob:
            return n
        return rng.randrange(n)

    def _length(self, caption):
        return len(self.tokenizer(caption)["input_ids"])  # with [CLS] and [SEP]

    def pack(self, caption, phrase_spans, negatives, rng):
        """Join ``caption`` and the ``negatives`` that fit (official ``pack_caption``).

        Returns:
            (str, list[list[[int, int]]]): the packed caption and the shifted spans.
        """
        if not negatives:
            return caption, phrase_spans
        room = self.max_query_len - self._length(caption)
        order = list(range(len(negatives)))
        rng.shuffle(order)
        parts = [caption]
        for i in order:
            length = self._length(negatives[i])
            if length < room:
                parts.append(negatives[i])
                room -= length
        positions = list(range(len(parts)))
        rng.shuffle(positions)
        packed, offset = "", 0
        for p in positions:
            if p == 0:
                offset = len(packed)
            packed += parts[p] + ("" if parts[p].endswith(".") else ".") + " "
        spans = [[[s + offset, e + offset] for s, e in phrase] for phrase in phrase_spans]
        return packed, spans

    def __call__(self, dataset_name, caption, phrase_spans, rng):
        """Packed caption and spans of a record of ``dataset_name`` (unchanged for records of
        sets that are not caption sets)."""
        pool = self.pools.get(dataset_name)
        if pool is None:
            return caption, phrase_spans
        k = self.number_of_negatives(rng)
        negatives = [pool[rng.randrange(len(pool))] for _ in range(k)]
        return self.pack(caption, phrase_spans, negatives, rng)
