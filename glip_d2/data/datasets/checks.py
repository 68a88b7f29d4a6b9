"""Checks every loader runs on its records, so that bad data fails when the dataset is loaded
(naming the file and the image) instead of in the middle of a training run or an evaluation.

* Boxes (:func:`check_record_boxes`): NaN or infinite coordinates, a negative width or height
  and a box entirely outside its image are errors; boxes the mapper will drop as degenerate
  (no width or height left in the legacy "+1" convention after clipping,
  ``glip_d2/structures/legacy_boxes.py``) are counted and reported once per dataset.
* Spans (:class:`SpanChecker`): :func:`glip_d2.text.check_spans` (inside the caption, not only
  whitespace) after clipping ends that lie one or two characters past the caption. The
  official loader accepts those (its positive map looks the last token up at ``end - 1``,
  ``end - 2``, ``end - 3``: microsoft/GLIP maskrcnn_benchmark/data/datasets/modulated_coco.py,
  ``create_positive_map``), so they are clipped, counted and reported once per dataset.
"""

import logging
import math

import numpy as np
from detectron2.structures import BoxMode

from ...structures import clip_boxes_legacy, nonempty_legacy, xywh_to_legacy_xyxy
from ...text import check_spans

__all__ = ["SpanChecker", "box_problem", "check_record_boxes"]

logger = logging.getLogger(__name__)

# Span ends this many characters past the caption are clipped instead of refused.
MAX_SPAN_OVERRUN = 2


def _where(source, record, k=None):
    where = f"{source}: image id={record.get('image_id')} ({record.get('file_name')!r})"
    return where if k is None else f"{where}, annotation {k}"


def box_problem(xywh, height=None, width=None):
    """What is wrong with one ``[x, y, w, h]`` box, or None.

    Returns:
        str | None: "has a NaN or infinite coordinate", "has a negative width (-3)", "has a
        negative height (...)" or "lies entirely outside the WxH image" (when the size is given).
    """
    x, y, w, h = (float(v) for v in xywh)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "has a NaN or infinite coordinate"
    if w < 0:
        return f"has a negative width ({w:g})"
    if h < 0:
        return f"has a negative height ({h:g})"
    if height is not None and width is not None:
        # legacy inclusive corners: x2 = x + w - 1 (mapper, _legacy_boxes)
        if x > width - 1 or y > height - 1 or x + w - 1 < 0 or y + h - 1 < 0:
            return f"lies entirely outside the {width}x{height} image"
    return None


def _annotation_at(records, counts, i):
    """(record, annotation index) of the ``i``-th annotation over all records."""
    r = int(np.searchsorted(np.cumsum(counts), i, side="right"))
    return records[r], i - int(sum(counts[:r]))


def _xywh_array(records, source):
    """(N, 4) float64 XYWH boxes of all annotations, and the number of boxes per record.

    Flat arrays, no per-box Python objects: Objects365 holds about 10 million boxes.
    """
    counts = [len(r.get("annotations", ())) for r in records]
    rows = [a.get("bbox") for r in records for a in r.get("annotations", ())]
    try:
        boxes = np.array(rows, dtype=np.float64)
        shaped = boxes.ndim == 2 and boxes.shape[1] == 4 or not rows
    except (TypeError, ValueError):
        shaped = False
    if not shaped:
        for i, box in enumerate(rows):
            try:
                ok = len(box) == 4 and all(isinstance(float(v), float) for v in box)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                r, k = _annotation_at(records, counts, i)
                raise ValueError(f"{_where(source, r, k)}: bbox {box!r} is not 4 numbers")
        raise ValueError(f"{source}: the boxes are not 4 numbers each")
    boxes = boxes.reshape(-1, 4)
    modes = np.array(
        [a.get("bbox_mode", BoxMode.XYWH_ABS) for r in records for a in r.get("annotations", ())],
        dtype=np.int64,
    )
    for mode in np.unique(modes):
        if mode != int(BoxMode.XYWH_ABS):
            index = np.nonzero(modes == mode)[0]
            boxes[index] = BoxMode.convert(boxes[index], BoxMode(int(mode)), BoxMode.XYWH_ABS)
    return boxes, counts


def check_record_boxes(records, source):
    """Check every annotation box of ``records`` (see the module docstring).

    Args:
        records (list[dict]): D2 records (``annotations`` with ``bbox``, ``bbox_mode``;
            ``height``/``width`` when known).
        source (str): the file they come from, for messages.
    Returns:
        int: the number of boxes the mapper will drop as degenerate (also logged as a warning).
    Raises:
        ValueError: naming ``source``, the image id and file, the annotation and the box.
    """
    boxes, counts = _xywh_array(records, source)
    if not len(boxes):
        return 0
    sizes = [[r.get("height") or np.inf, r.get("width") or np.inf] for r in records]
    size = np.repeat(np.array(sizes, dtype=np.float64), counts, axis=0)
    legacy = xywh_to_legacy_xyxy(boxes)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    bad |= (legacy[:, 0] > size[:, 1] - 1) | (legacy[:, 1] > size[:, 0] - 1)
    bad |= (legacy[:, 2] < 0) | (legacy[:, 3] < 0)
    if bad.any():
        i = int(np.argmax(bad))
        r, k = _annotation_at(records, counts, i)
        known = np.isfinite(size[i]).all()
        problem = box_problem(boxes[i], *(size[i].astype(int) if known else (None, None)))
        raise ValueError(
            f"{_where(source, r, k)}: box {list(r['annotations'][k]['bbox'])} {problem}"
        )
    clipped = clip_boxes_legacy(legacy, size[:, :1], size[:, 1:])
    degenerate = int((~nonempty_legacy(clipped)).sum())
    if degenerate:
        logger.warning(
            "%s: %d of %d boxes have no width or height left (legacy +1 convention, clipped to "
            "the image) and are dropped in training",
            source,
            degenerate,
            len(boxes),
        )
    return degenerate


class SpanChecker:
    """:func:`glip_d2.text.check_spans` for a dataset's spans, clipping small overruns.

    Call it for each annotation's (or phrase's) spans, then :meth:`report` once.
    """

    def __init__(self, source):
        self.source = source
        self.clipped = 0

    def __call__(self, caption, spans, where):
        """The checked spans, ends up to ``MAX_SPAN_OVERRUN`` past the caption clipped to it."""
        fixed = []
        for span in spans if isinstance(spans, (list, tuple)) else ():
            if (
                isinstance(span, (list, tuple))
                and len(span) == 2
                and int(span[0]) < len(caption) < int(span[1]) <= len(caption) + MAX_SPAN_OVERRUN
            ):
                span = [int(span[0]), len(caption)]
                self.clipped += 1
            fixed.append(span)
        return check_spans(caption, fixed if fixed else spans, where)

    def report(self):
        """Log the number of clipped spans (once; nothing when none was clipped)."""
        if self.clipped:
            logger.warning(
                "%s: %d spans ended 1 or %d characters past their caption and were clipped to "
                "it (the official loader still finds their last token)",
                self.source,
                self.clipped,
                MAX_SPAN_OVERRUN,
            )
