"""Teacher -> pseudo-labels: ground the phrases of image captions with a trained GLIP.

::

    python -m glip_d2.pseudo_label --config-file CONFIG --weights TEACHER.pth \\
        --captions CAPTIONS.json --image-root IMAGES/ --output PSEUDO.json [--num-gpus N]

GLIP's self-training (the paper's Sec. 3.3; microsoft/GLIP does not include this step): for
each image and caption, the caption's phrases are found (spaCy noun phrases when installed,
otherwise the teacher's own token scores, ``--phrase-finder``), the teacher grounds them, and
its boxes are kept by the official rule (:func:`glip_d2.data.datasets.screen_teacher_boxes`:
score > ``CAPTION_CONF``, optional ``CAPTION_NMS``, images with < ``CAPTION_MIN_BOX`` boxes keep
no box). The output is the json :func:`glip_d2.data.datasets.register_pseudo_label_captions`
reads (``DATASETS.GLIP.PSEUDO_LABEL_SETS``).

**CAPTIONS.json** is either a list of ``{"file_name", "caption"}`` (optional ``image_id``,
``height``, ``width``) or COCO-captions style ``{"images": [{"id", "file_name", ...}],
"annotations": [{"image_id", "caption"}]}`` (one pair per annotation), e.g. glip_synth's
``annotations/captions.json``. ``file_name`` is relative to ``--image-root``. A pair may carry
its phrases, ``"phrase_spans": [[[start, end], ...], ...]`` (per phrase its char spans); they
are grounded as given instead of being found.

**Output**: one record per pair, in input order: ``{"file_name", "image_id", "caption",
"height", "width", "entities": [{"phrase", "tokens_positive": [[start, end], ...], "boxes":
[[x1, y1, x2, y2], ...], "scores": [...]}]}``, boxes in original-image pixels in Detectron2's
XYXY_ABS convention (``x2 = x + w``: the model's legacy inclusive ``x2`` plus one, so the
training mapper gets the teacher's boxes back exactly), best first per phrase.

**Resuming**: finished batches are kept in ``PSEUDO.json.parts/`` (one file per batch, each
written to a temporary name and renamed, so a part is whole or absent); running the same
command again labels only what is missing. The output itself is written the same way at the
end, when every pair is labelled, and the parts are then removed. ``--restart`` discards them.

**Processes**: ``--num-gpus N`` starts N processes through Detectron2's ``launch`` (GLOO on
CPU, where each process gets ``cpu_count / N`` threads); each labels every N-th missing pair and
rank 0 merges the parts.
"""

import argparse
import hashlib
import json
import os
import shutil
import uuid

import torch
from detectron2.config import get_cfg
from detectron2.engine import launch
from detectron2.utils import comm

from .config import add_glip_config
from .data.datasets import screen_teacher_boxes
from .predictor import PHRASE_FINDERS, GLIPPredictor, read_image
from .text import check_phrase_spans

__all__ = [
    "entry_from_prediction",
    "label_shard",
    "load_caption_pairs",
    "main",
    "merge_parts",
    "missing_indices",
]


def load_caption_pairs(path):
    """The (image, caption) pairs of a CAPTIONS.json (module docstring), in file order.

    Returns:
        list[dict]: ``file_name``, ``caption``, ``image_id`` and, when given, ``height``,
        ``width``, ``phrase_spans``.
    """
    with open(path) as f:
        data = json.load(f)
    pairs = []
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        images = {im["id"]: im for im in data["images"]}
        for k, ann in enumerate(data["annotations"]):
            if ann.get("image_id") not in images:
                raise ValueError(f"{path}: annotations[{k}] names no image of 'images': {ann}")
            image = images[ann["image_id"]]
            pairs.append({**image, "image_id": image["id"], "caption": ann.get("caption")})
    elif isinstance(data, list):
        pairs = [dict(entry, image_id=entry.get("image_id", k)) for k, entry in enumerate(data)]
    else:
        raise ValueError(
            f"{path}: expected a list of {{file_name, caption}} or a COCO-captions dict with "
            "'images' and 'annotations'"
        )
    for k, pair in enumerate(pairs):
        for key in ("file_name", "caption"):
            if not isinstance(pair.get(key), str) or not pair[key].strip():
                raise ValueError(f"{path}: pair {k} has no {key!r}: {pair}")
        if "phrase_spans" in pair:
            check_phrase_spans(pair["caption"], pair["phrase_spans"], f"{path}: pair {k}")
    keys = ("file_name", "caption", "image_id", "height", "width", "phrase_spans")
    return [{key: p[key] for key in keys if key in p} for p in pairs]


def entry_from_prediction(pair, prediction, height, width, conf=0.5, nms=-1.0, min_boxes=1):
    """The output record of one pair from ``GLIPPredictor``'s result for its caption.

    Args:
        pair (dict): from :func:`load_caption_pairs`.
        prediction (dict): ``instances`` (legacy inclusive boxes at the original size),
            ``phrases``, ``phrase_spans``.
    """
    inst = prediction["instances"]
    boxes = inst.pred_boxes.tensor.double().clone()
    boxes[:, 2:] += 1  # legacy inclusive x2/y2 -> XYXY_ABS (x2 = x + w)
    keep = screen_teacher_boxes(boxes, inst.scores, conf, nms, min_boxes) or []
    keep = sorted(keep, key=lambda k: -float(inst.scores[k]))
    entities = []
    for p, (name, spans) in enumerate(
        zip(prediction["phrases"], prediction["phrase_spans"], strict=True)
    ):
        mine = [k for k in keep if int(inst.pred_classes[k]) == p]
        if mine:
            entities.append(
                {
                    "phrase": name,
                    "tokens_positive": [list(span) for span in spans],
                    "boxes": [boxes[k].tolist() for k in mine],
                    "scores": [float(inst.scores[k]) for k in mine],
                }
            )
    return {**_entry_base(pair, height, width), "entities": entities}


def _entry_base(pair, height, width):
    entry = {k: pair[k] for k in ("file_name", "image_id", "caption")}
    return {**entry, "height": int(height), "width": int(width)}


def _predict_one(predictor, image, caption):
    try:
        return predictor(image, caption)
    except ValueError as e:  # a caption the teacher cannot prompt: recorded, no box
        return {"error": str(e)}


def _write_json_atomically(path, data):
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_parts(parts_dir):
    """{pair index: record} of every finished part."""
    done = {}
    for name in sorted(os.listdir(parts_dir)):
        if name.startswith("part-") and name.endswith(".json"):
            with open(os.path.join(parts_dir, name)) as f:
                done.update({int(k): v for k, v in json.load(f).items()})
    return done


def missing_indices(parts_dir, num_pairs):
    """Indices of the pairs no finished part holds."""
    done = _read_parts(parts_dir) if os.path.isdir(parts_dir) else {}
    return [i for i in range(num_pairs) if i not in done]


def prepare_parts_dir(parts_dir, job, restart=False):
    """Create the parts folder with its ``job.json``, or check that an existing one was made
    by the same job (same captions, teacher and rule), so that a resume cannot mix runs."""
    job_file = os.path.join(parts_dir, "job.json")
    if restart and os.path.isdir(parts_dir):
        shutil.rmtree(parts_dir)
    if os.path.isfile(job_file):
        with open(job_file) as f:
            previous = json.load(f)
        if previous != job:
            changed = sorted(k for k in set(job) | set(previous) if job.get(k) != previous.get(k))
            raise ValueError(
                f"{parts_dir} holds a partial run with other settings ({', '.join(changed)}); "
                "run with --restart to discard it, or use its settings to continue it"
            )
        return
    os.makedirs(parts_dir, exist_ok=True)
    _write_json_atomically(job_file, job)


def label_shard(
    predictor, pairs, indices, image_root, parts_dir, *, batch_size=8, rule=None, progress=False
):
    """Label ``pairs[i]`` for ``i`` in ``indices``, one part file per batch.

    Args:
        predictor (GLIPPredictor): the teacher.
        rule (dict | None): ``conf``, ``nms``, ``min_boxes`` of :func:`entry_from_prediction`.
        progress (bool): show a progress bar.
    """
    from tqdm import tqdm

    rule = rule or {}
    bar = tqdm(total=len(indices), desc="pseudo-labels", unit="image", disable=not progress)
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        images = []
        for i in batch:
            path = os.path.join(image_root, pairs[i]["file_name"])
            try:
                images.append(read_image(path, format=predictor.input_format))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read image {path!r} of caption pair {i}: {e}") from e
        captions = [
            {"caption": pairs[i]["caption"], "phrase_spans": pairs[i]["phrase_spans"]}
            if "phrase_spans" in pairs[i]
            else pairs[i]["caption"]
            for i in batch
        ]
        try:
            predictions = predictor.predict_batch(images, captions)
        except ValueError:  # e.g. spaCy finds no noun phrase in one caption: find which
            predictions = [
                _predict_one(predictor, img, c) for img, c in zip(images, captions, strict=True)
            ]
        part = {
            str(i): entry_from_prediction(pairs[i], pred, *img.shape[:2], **rule)
            if "error" not in pred
            else {**_entry_base(pairs[i], *img.shape[:2]), "entities": [], **pred}
            for i, pred, img in zip(batch, predictions, images, strict=True)
        }
        name = f"part-{batch[0]:09d}-{uuid.uuid4().hex[:8]}.json"
        _write_json_atomically(os.path.join(parts_dir, name), part)
        bar.update(len(batch))
    bar.close()


def merge_parts(parts_dir, num_pairs, output):
    """Write the output (all pairs in order) from the parts, then remove them.

    Returns:
        dict: counts of pairs, pairs with boxes, boxes and phrases.
    """
    done = _read_parts(parts_dir)
    missing = [i for i in range(num_pairs) if i not in done]
    if missing:
        raise RuntimeError(f"{parts_dir}: {len(missing)} pairs are not labelled: {missing[:10]}")
    records = [done[i] for i in range(num_pairs)]
    _write_json_atomically(output, records)
    shutil.rmtree(parts_dir)
    return {
        "pairs": len(records),
        "pairs_with_boxes": sum(bool(r["entities"]) for r in records),
        "boxes": sum(len(e["boxes"]) for r in records for e in r["entities"]),
        "phrases": sum(len(r["entities"]) for r in records),
    }


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def setup_cfg(args):
    cfg = add_glip_config(get_cfg())
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    if args.phrase_finder is not None:
        cfg.TEST.GLIP.PHRASE_FINDER = args.phrase_finder
    if args.text_threshold is not None:
        cfg.TEST.GLIP.TEXT_THRESHOLD = args.text_threshold
    for key, value in (("CAPTION_CONF", args.conf), ("CAPTION_NMS", args.nms)):
        if value is not None:
            setattr(cfg.DATASETS.GLIP, key, value)
    if args.min_boxes is not None:
        cfg.DATASETS.GLIP.CAPTION_MIN_BOX = args.min_boxes
    cfg.freeze()
    return cfg


def run(args):
    """One process's part of the job (``launch`` runs it on every rank)."""
    cfg = setup_cfg(args)
    rank, world = comm.get_rank(), comm.get_world_size()
    if world > 1 and cfg.MODEL.DEVICE == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    pairs = load_caption_pairs(args.captions)
    parts_dir = f"{args.output}.parts"
    g = cfg.DATASETS.GLIP
    rule = {"conf": g.CAPTION_CONF, "nms": g.CAPTION_NMS, "min_boxes": g.CAPTION_MIN_BOX}
    weights = cfg.MODEL.WEIGHTS
    job = {
        "captions": os.path.abspath(args.captions),
        "captions_sha256": _file_digest(args.captions),
        "image_root": os.path.abspath(args.image_root),
        "weights": os.path.abspath(weights) if weights else "",
        "weights_bytes_mtime": [os.path.getsize(weights), os.path.getmtime(weights)]
        if weights and os.path.isfile(weights)
        else None,
        "config": cfg.dump(),
        "rule": rule,
    }
    if rank == 0:
        prepare_parts_dir(parts_dir, job, restart=args.restart)
    comm.synchronize()
    todo = missing_indices(parts_dir, len(pairs))
    comm.synchronize()  # every rank has listed the parts before any new one is written
    mine = todo[rank::world]
    if rank == 0:
        print(
            f"{len(pairs) - len(todo)} of {len(pairs)} caption pairs already labelled in "
            f"{parts_dir}; labelling {len(todo)} on {world} process(es)"
        )
    if mine:
        predictor = GLIPPredictor(cfg)
        label_shard(
            predictor,
            pairs,
            mine,
            args.image_root,
            parts_dir,
            batch_size=args.batch_size,
            rule=rule,
            progress=rank == 0,
        )
    comm.synchronize()
    if rank == 0:
        stats = merge_parts(parts_dir, len(pairs), args.output)
        print(
            f"wrote {args.output}: {stats['pairs']} pairs, {stats['pairs_with_boxes']} with "
            f"boxes kept (score > {rule['conf']}), {stats['boxes']} boxes of "
            f"{stats['phrases']} phrases"
        )
        return stats
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Pseudo-label image captions with a GLIP teacher (glip_d2.pseudo_label)"
    )
    parser.add_argument("--config-file", required=True, help="the teacher's config")
    parser.add_argument("--weights", default=None, help="teacher weights (MODEL.WEIGHTS)")
    parser.add_argument("--captions", required=True, help="CAPTIONS.json (see the docstring)")
    parser.add_argument("--image-root", default=None, help="image folder (default: captions')")
    parser.add_argument("--output", required=True, help="the pseudo-label json to write")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--phrase-finder",
        choices=PHRASE_FINDERS,
        default=None,
        help="TEST.GLIP.PHRASE_FINDER (default: the config's, 'auto')",
    )
    parser.add_argument(
        "--text-threshold",
        type=float,
        default=None,
        help="TEST.GLIP.TEXT_THRESHOLD for the model's phrases",
    )
    parser.add_argument("--conf", type=float, default=None, help="DATASETS.GLIP.CAPTION_CONF")
    parser.add_argument("--nms", type=float, default=None, help="DATASETS.GLIP.CAPTION_NMS")
    parser.add_argument("--min-boxes", type=int, default=None, help="DATASETS.GLIP.CAPTION_MIN_BOX")
    parser.add_argument("--restart", action="store_true", help="discard a partial run")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs, or CPU procs)")
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.image_root is None:
        args.image_root = os.path.dirname(os.path.abspath(args.captions))
    if args.batch_size < 1 or args.num_gpus < 1:
        parser.error("--batch-size and --num-gpus must be >= 1")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"--output: folder {out_dir} does not exist")
    if not os.path.isfile(args.captions):
        parser.error(f"--captions: no file {args.captions}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.num_gpus > 1:
        cfg = setup_cfg(args)
        if cfg.MODEL.DEVICE == "cpu":  # D2's launch picks NCCL whenever CUDA is visible
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch(run, args.num_gpus, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()
