"""Image-text retrieval metrics: R@K both ways from a score matrix, ITM re-ranking of the top K,
and the recall of a random ranking (the floor a model without ITC is compared with).

Positives are decided by caption text: caption ``t`` matches image ``i`` when ``t`` is, word
for word, one of ``i``'s captions. For COCO / Flickr30K (five human captions per image, exact
duplicates rare) this is the usual protocol; in glip_synth, where several images share a
caption such as "a large red square.", the identical captions of other images count as matches
instead of making R@1 unreachable.

A query's rank is the number of non-matching candidates that score at least as high as its
best-scoring match (ties count against the model); R@K is the percentage of queries with rank
< K. ``i2t`` = image queries over captions, ``t2i`` = caption queries over images (X-VLM's
``txt_r*`` and ``img_r*``).
"""

import torch

__all__ = [
    "caption_table",
    "best_match_ranks",
    "retrieval_recalls",
    "top_k_pairs",
    "rerank_scores",
    "random_ranking_recalls",
]


def caption_table(image_captions):
    """Captions of every image, flattened, and the image-caption match matrix.

    Args:
        image_captions (list[list[str]]): per image its captions.
    Returns:
        (list[str], BoolTensor (I, T)): the T captions in image order and ``matches[i, t]``.
    """
    texts = [c for captions in image_captions for c in captions]
    index = {}
    for t, text in enumerate(texts):
        index.setdefault(text, []).append(t)
    matches = torch.zeros(len(image_captions), len(texts), dtype=torch.bool)
    for i, captions in enumerate(image_captions):
        for text in set(captions):
            matches[i, index[text]] = True
    return texts, matches


def best_match_ranks(scores, matches):
    """(Q,) rank of each query's best match among its candidates (0 = first).

    Args:
        scores (Tensor): (Q, C) query-candidate scores (higher = better).
        matches (BoolTensor): (Q, C).
    """
    scores = scores.float()
    best = scores.masked_fill(~matches, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~matches).sum(dim=1)


def retrieval_recalls(i2t_scores, matches, t2i_scores=None, ks=(1, 5, 10)):
    """R@K of both directions in percent.

    Args:
        i2t_scores (Tensor): (I, T) image-caption scores for image queries.
        matches (BoolTensor): (I, T) from :func:`caption_table`.
        t2i_scores (Tensor | None): (I, T) scores for caption queries (default ``i2t_scores``;
            they differ after ITM re-ranking, which re-scores each direction's own top K).
    Returns:
        dict: ``i2t_R@K``, ``t2i_R@K`` for each K and ``mean_R``, their mean.
    """
    t2i_scores = i2t_scores if t2i_scores is None else t2i_scores
    out = {}
    for name, ranks in (
        ("i2t", best_match_ranks(i2t_scores, matches)),
        ("t2i", best_match_ranks(t2i_scores.t(), matches.t())),
    ):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * (ranks < k).double().mean().item()
    out["mean_R"] = sum(out.values()) / len(out)
    return out


def top_k_pairs(scores, k):
    """The (image, caption) pairs an ITM re-ranking scores: each image's best ``k`` captions
    and each caption's best ``k`` images.

    Returns:
        (LongTensor (I, k'), LongTensor (T, k'')): caption indices per image, image indices per
        caption (k' = min(k, T), k'' = min(k, I)).
    """
    return (
        scores.topk(min(k, scores.shape[1]), dim=1).indices,
        scores.t().topk(min(k, scores.shape[0]), dim=1).indices,
    )


def rerank_scores(scores, k, pair_scores):
    """X-VLM's re-ranking: each query's best ``k`` candidates get their ITM score, the others
    rank below them.

    Args:
        scores (Tensor): (I, T) ITC scores.
        pair_scores (dict[(int, int), float]): ITM score of every pair of :func:`top_k_pairs`.
    Returns:
        (Tensor (I, T), Tensor (I, T)): scores for image queries and for caption queries.
    """
    texts_per_image, images_per_text = top_k_pairs(scores, k)
    i2t = torch.full(scores.shape, float("-inf"))
    t2i = torch.full(scores.shape, float("-inf"))
    for i, row in enumerate(texts_per_image.tolist()):
        for t in row:
            i2t[i, t] = pair_scores[(i, t)]
    for t, col in enumerate(images_per_text.tolist()):
        for i in col:
            t2i[i, t] = pair_scores[(i, t)]
    return i2t, t2i


def random_ranking_recalls(matches, ks=(1, 5, 10)):
    """Expected R@K (percent) of a uniformly random ranking, same keys as retrieval_recalls.

    A query with p matches among C candidates misses the top K with probability
    prod_{j<K} (C - p - j) / (C - j).
    """

    def expected(m):
        candidates = m.shape[1]
        p = m.sum(dim=1).double()
        out = {}
        for k in ks:
            miss = torch.ones_like(p)
            for j in range(min(k, candidates)):
                miss = miss * ((candidates - p - j) / (candidates - j)).clamp(min=0.0)
            out[k] = 100.0 * (1.0 - miss).mean().item()
        return out

    out = {}
    for name, m in (("i2t", matches), ("t2i", matches.t())):
        for k, v in expected(m).items():
            out[f"{name}_R@{k}"] = v
    out["mean_R"] = sum(out.values()) / len(out)
    return out
