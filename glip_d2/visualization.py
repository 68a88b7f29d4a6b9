"""Detections of a :class:`~glip_d2.predictor.GLIPPredictor` as records and as a drawing.

Shared by the command-line demo (``demo/demo.py``) and the web page (:mod:`glip_d2.web`)::

    out = predictor(image_bgr, ["red circle", "blue star"])
    detections = detection_records(out, threshold=0.3)
    drawn_rgb = draw_detections(image_bgr[:, :, ::-1], detections).get_image()

Each phrase keeps one colour (Detectron2's colormap, indexed by the phrase), so the boxes of a
phrase and its row in a table match.
"""

from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["detection_records", "draw_detections", "phrase_color"]

_COLORS = colormap(rgb=True, maximum=1)


def phrase_color(index):
    """The RGB colour (floats in [0, 1]) of phrase ``index``."""
    return tuple(float(c) for c in _COLORS[index % len(_COLORS)])


def detection_records(output, threshold):
    """The detections of one predictor output with ``score >= threshold``, best first.

    Args:
        output (dict): ``{"instances": Instances, "phrases": list[str]}`` from the predictor.
        threshold (float): minimum score.
    Returns:
        list[dict]: ``{"box_xyxy": [x1, y1, x2, y2], "score", "phrase_index", "phrase"}``;
        boxes in original-image pixels.
    """
    instances = output["instances"]
    instances = instances[instances.scores >= threshold]
    phrases = output["phrases"]
    records = [
        {
            "box_xyxy": [round(float(v), 3) for v in box],
            "score": round(float(score), 6),
            "phrase_index": int(label),
            "phrase": phrases[int(label)],
        }
        for box, score, label in zip(
            instances.pred_boxes.tensor.tolist(),
            instances.scores.tolist(),
            instances.pred_classes.tolist(),
            strict=True,
        )
    ]
    return sorted(records, key=lambda r: -r["score"])


def draw_detections(image_rgb, detections, *, scale=1.0, instance_mode=ColorMode.IMAGE):
    """Draw boxes labelled "phrase score" on an image.

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB image.
        detections (list[dict]): records of :func:`detection_records`.
        scale (float): output size relative to the image (larger: sharper labels on small
            images).
    Returns:
        detectron2.utils.visualizer.VisImage: ``.get_image()`` is the (H*scale, W*scale, 3)
        RGB drawing; ``.save(path)`` writes it.
    """
    visualizer = Visualizer(image_rgb, None, scale=scale, instance_mode=instance_mode)
    if not detections:
        return visualizer.output
    return visualizer.overlay_instances(
        boxes=[d["box_xyxy"] for d in detections],
        labels=[f"{d['phrase']} {d['score']:.2f}" for d in detections],
        assigned_colors=[phrase_color(d["phrase_index"]) for d in detections],
    )
