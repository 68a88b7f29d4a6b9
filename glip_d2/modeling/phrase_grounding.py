"""Ground a free caption with phrases the model finds itself (no parser).

The caption runs once through the model as a prompt without phrases
(:meth:`GLIPDetector.dense_outputs`). Every token gets a score, the phrases are the runs of
tokens that pass the text threshold (:func:`glip_d2.text.find_phrases`), and the same head
outputs are then post-processed with those phrases. The head scores tokens, not phrases, so
the detections are exactly those of :meth:`GLIPDetector.inference` for the caption with the
found ``phrase_spans``, at the cost of one forward pass.

**A token's score** is the highest detection score the model gives that token alone at any
location: ``max_n sqrt(sigmoid(logit[n, t]) * sigmoid(centerness[n]))``, i.e. GLIP's final
score (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/inference.py, ``ATSSPostProcessor``:
``sqrt(score x centerness)``) for a one-token phrase, before NMS. Grounding DINO thresholds a
token's probability at each of its 900 query boxes, each a finished box; GLIP predicts at every
location of a dense grid and ranks locations by probability x centerness, so the token score
uses GLIP's own ranking and scale: a token passes the text threshold ``tau`` exactly when the
model would detect that token alone with score > ``tau`` somewhere (for
``tau**2 >= MODEL.GLIP.INFERENCE_TH``, the candidate threshold on the probability). Taking the
maximum over locations, not one phrase set per box, gives one phrase set per caption, so each
phrase is one class of the detections.

**The default text threshold** (``TEST.GLIP.TEXT_THRESHOLD`` 0.4) is Grounding DINO's 0.25 moved
to this scale (``sqrt(0.25 x centerness)`` is 0.35-0.42 for centerness 0.5-0.7) and the best
trade-off measured on the main job's model (demo/main_job.py recipe, val AP50 74.9) as the
teacher of ``python -m glip_d2.pseudo_label`` on the first 120 images of glip_synth's caption
split: pseudo-label precision / recall of the mentioned objects at IoU 0.5 (boxes with score
> 0.5, the phrase naming the object's class) of 50.9 / 9.4 at 0.25, 61.4 / 41.3 at 0.35,
58.2 / 62.3 at 0.4, 48.9 / 71.7 at 0.45, 42.9 / 73.6 at 0.5; the captions' true phrases gave
65.5 / 82.6. Below 0.4 the runs swallow the words between phrases ("red circle and a blue
star" is one phrase whose boxes fall below the confidence rule); above it, words the teacher
never saw in a prompt ("image", "background", "large") become phrases of their own.
"""

import torch
from detectron2.structures import Boxes, Instances

from ..text import build_positive_map, find_phrases
from .postprocess import rescale_instances

__all__ = ["ground_captions", "token_scores"]


def token_scores(logits, centerness, text_mask=None):
    """Per-token score of each image: the best one-token detection score over locations.

    Args:
        logits (Tensor): (B, N, L) token logits.
        centerness (Tensor): (B, N, 1) centerness logits.
        text_mask (Tensor or None): (B, L), 0 at padding (scored 0).
    Returns:
        Tensor: (B, L) float32 in [0, 1].
    """
    probs = logits.float().sigmoid() * centerness.float().sigmoid()
    scores = probs.amax(dim=1).sqrt()
    if text_mask is not None:
        scores = scores * (text_mask > 0).to(scores.dtype)
    return scores


def _empty_instances(size, device):
    inst = Instances(tuple(size))
    inst.pred_boxes = Boxes(torch.zeros((0, 4), device=device))
    inst.scores = torch.zeros((0,), device=device)
    inst.pred_classes = torch.zeros((0,), dtype=torch.long, device=device)
    return inst


def ground_captions(model, batched_inputs, text_threshold, images=None, text_cache=None):
    """Find each caption's phrases with the model and detect them, in one forward pass.

    Args:
        model (GLIPDetector): in eval mode (the caller chooses ``torch.no_grad``).
        batched_inputs (list[dict]): ``image``, ``caption``, optional ``height``/``width``
            (``phrase_spans`` / ``class_names`` are not used).
        text_threshold (float): a token joins a phrase when its score is greater.
        images (ImageList or None): already normalised images.
        text_cache (TextFeatureCache or None): passed to :meth:`GLIPDetector.dense_outputs`.
    Returns:
        list[dict]: per image ``instances`` (boxes at ``height`` x ``width``, ``pred_classes``
        indexing ``phrases``), ``phrases`` (list[str]), ``phrase_spans`` and ``token_scores``
        ((L,) tensor). No phrase found: empty ``phrases`` and no detection.
    """
    dense = model.dense_outputs(batched_inputs, images, text_cache=text_cache)
    scores = token_scores(dense["logits"], dense["centerness"], dense["text_mask"])
    lang = model.language_backbone
    width = dense["logits"].shape[-1]
    out = []
    for i, x in enumerate(batched_inputs):
        caption = x["caption"]
        names, spans = find_phrases(
            lang.tokenizer, caption, scores[i], text_threshold, lang.max_query_len
        )
        size = dense["images"].image_sizes[i]
        if names:
            # Columns past the head's token width hold no phrase token (they are padding).
            pmap = build_positive_map(lang.tokenizer, caption, spans, lang.max_query_len)
            pmap = pmap[:, :width].to(scores.device)
            head = {k: dense[k][i : i + 1] for k in ("logits", "bbox_reg", "centerness")}
            (inst,) = model.post_processor(
                head, dense["anchors"], dense["num_anchors_per_level"], [pmap], [size]
            )
        else:
            inst = _empty_instances(size, scores.device)
        inst = rescale_instances(inst, x.get("height", size[0]), x.get("width", size[1]))
        out.append(
            {"instances": inst, "phrases": names, "phrase_spans": spans, "token_scores": scores[i]}
        )
    return out
