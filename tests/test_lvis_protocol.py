"""The official LVIS evaluation protocol: chunks of CHUNK_SIZE names, a per-chunk detection cap,
all chunks' detections merged, the final cap (or fixed AP) in the LVIS evaluator; on a tiny
LVIS-format fixture run through the test loader, a tiny model and the evaluator."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from glip_d2.config import add_glip_config
from glip_d2.data.datasets import lvis_v1_official_names, register_lvis_evaluation
from glip_d2.engine import GLIPTrainer
from glip_d2.evaluation import GLIPLVISEvaluator, build_glip_evaluator
from glip_d2.text import build_detection_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["red circle", "blue square", "green star", "cat", "traffic light", "zebra", "bus"]
CHUNK, PER_CHUNK, PER_IMAGE = 3, 5, 8  # 7 names -> chunks of 3, 3, 1


def _write_lvis(path, images, anns):
    cats = [
        {"id": i + 1, "name": n.replace(" ", "_"), "frequency": "rcf"[i % 3], "image_count": 1}
        for i, n in enumerate(NAMES)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _ann(i, image_id, cat, box):
    x, y, w, h = box
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {
        "id": i,
        "image_id": image_id,
        "category_id": cat,
        "bbox": box,
        "area": w * h,
        "segmentation": [poly],
    }


def _register(name, json_file, root):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_lvis_evaluation(name, str(json_file), str(root) + os.sep, class_names=NAMES)


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory):
    """Two 96x96 noise images in an LVIS-format json (coco_url names their split folder)."""
    root = tmp_path_factory.mktemp("lvis")
    (root / "val2017").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for image_id in (1, 2):
        file_name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2017" / file_name)
        images.append(
            {
                "id": image_id,
                "width": 96,
                "height": 96,
                "coco_url": f"http://images.cocodataset.org/val2017/{file_name}",
                "not_exhaustive_category_ids": [],
                "neg_category_ids": [],
            }
        )
    json_file = root / "lvis_tiny.json"
    _write_lvis(json_file, images, [_ann(1, 1, 1, [10, 10, 30, 30])])
    _register("glip_test_lvis_tiny", json_file, root)
    return root, images


@pytest.fixture(scope="module")
def tiny_cfg():
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs/quick_schedules/glip_small_instant_test.yaml"))
    cfg.DATASETS.TEST = ("glip_test_lvis_tiny",)
    # 16 tokens: the 7 names do not fit one prompt, so the mapper gives class_names (as for
    # LVIS's 1203 names in 256 tokens) and the model chunks them.
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 16
    cfg.MODEL.GLIP.CHUNK_SIZE = CHUNK
    cfg.MODEL.GLIP.DETECTIONS_PER_CHUNK = PER_CHUNK
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0  # untrained weights: every candidate passes
    cfg.TEST.DETECTIONS_PER_IMAGE = PER_IMAGE
    return cfg


def test_tiny_lvis_chunks_caps_and_merge(tiny_lvis, tiny_cfg, tmp_path):
    root, images = tiny_lvis
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    inputs = [batch[0] for batch in GLIPTrainer.build_test_loader(tiny_cfg, "glip_test_lvis_tiny")]
    assert [x["image_id"] for x in inputs] == [1, 2]
    assert all(x["class_names"] == NAMES for x in inputs)
    with torch.no_grad():
        outputs = [model([x])[0] for x in inputs]
        # the same model without a per-chunk cap: each chunk's full NMS output
        model.post_processor.detections_per_image = 0
        uncapped = [model([x])[0]["instances"] for x in inputs]
        model.post_processor.detections_per_image = PER_CHUNK

    for out, full in zip(outputs, uncapped, strict=True):
        inst = out["instances"]
        chunk = inst.pred_classes // CHUNK
        # every chunk keeps its best PER_CHUNK detections; the model does not apply the
        # final per-image cap (15 > PER_IMAGE): that is the evaluator's job
        assert torch.bincount(chunk).tolist() == [PER_CHUNK] * 3
        assert len(inst) == 3 * PER_CHUNK > PER_IMAGE
        assert bool((chunk[1:] >= chunk[:-1]).all())  # concatenated in chunk order, no NMS
        full_chunk = full.pred_classes // CHUNK
        assert torch.bincount(full_chunk).min() > PER_CHUNK  # the cap did cut every chunk
        for k in range(3):
            best = full.scores[full_chunk == k].sort(descending=True).values[:PER_CHUNK]
            assert torch.equal(inst.scores[chunk == k].sort(descending=True).values, best)

    # Ground truth = image 1's best detection of the last chunk ("bus", category id 7).
    inst = outputs[0]["instances"]
    bus = inst[inst.pred_classes == 6]
    x1, y1, x2, y2 = bus.pred_boxes.tensor[bus.scores.argmax()].tolist()
    gt_json = tmp_path / "gt.json"
    _write_lvis(gt_json, images, [_ann(1, 1, 7, [x1, y1, x2 - x1, y2 - y1])])
    _register("glip_test_lvis_tiny_gt", gt_json, root)
    cfg = tiny_cfg.clone()
    cfg.DATASETS.TEST = ("glip_test_lvis_tiny_gt",)
    cfg.OUTPUT_DIR = str(tmp_path)

    # Fixed AP (official default): no per-image cap; the GT's own detection ranks first.
    cfg.TEST.GLIP.LVIS_FIXED_AP = True
    fixed = build_glip_evaluator(cfg, "glip_test_lvis_tiny_gt", str(tmp_path / "fixed"))
    assert isinstance(fixed, GLIPLVISEvaluator) and fixed._max_dets_per_image == -1
    fixed.reset()
    fixed.process(inputs, outputs)
    assert fixed.evaluate()["bbox"]["AP"] == pytest.approx(100.0)

    # Standard AP: the LVIS API keeps each image's best TEST.DETECTIONS_PER_IMAGE of the merge.
    cfg.TEST.GLIP.LVIS_FIXED_AP = False
    standard = build_glip_evaluator(cfg, "glip_test_lvis_tiny_gt", str(tmp_path / "std"))
    assert standard._max_dets_per_image == PER_IMAGE
    standard.reset()
    standard.process(inputs, outputs)
    standard.evaluate()
    with open(tmp_path / "std" / "lvis_instances_results.json") as f:
        records = json.load(f)
    assert len(records) == 2 * 3 * PER_CHUNK  # every chunk of every image reached it
    from lvis import LVISResults

    kept = LVISResults(standard._lvis_api, records, max_dets=standard._max_dets_per_image)
    for image_id in (1, 2):
        scores = sorted((r["score"] for r in records if r["image_id"] == image_id), reverse=True)
        mine = sorted(
            (a["score"] for a in kept.dataset["annotations"] if a["image_id"] == image_id),
            reverse=True,
        )
        assert mine == scores[:PER_IMAGE]


@pytest.mark.parametrize("model", ["GLIP-T", "GLIP-L"])
@pytest.mark.parametrize("split", ["minival", "val"])
def test_lvis_configs_follow_the_official_protocol(model, split):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, f"configs/lvis/{model}_lvis_{split}.yaml"))
    assert cfg.MODEL.GLIP.NUM_LAYERS == {"GLIP-T": 6, "GLIP-L": 8}[model]
    assert cfg.MODEL.GLIP.CHUNK_SIZE == 40  # TEST.CHUNKED_EVALUATION
    assert cfg.MODEL.GLIP.DETECTIONS_PER_CHUNK == 300  # MODEL.ATSS.DETECTIONS_PER_IMG
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300  # LVIS's standard-AP cap
    assert cfg.TEST.GLIP.LVIS_FIXED_AP  # the official default (MDETR's fixed AP)
    assert (cfg.MODEL.GLIP.INFERENCE_TH, cfg.INPUT.MIN_SIZE_TEST) == (0.05, 800)
    (name,) = cfg.DATASETS.TEST
    assert name == {"minival": "lvis_evaluation_mini_val", "val": "lvis_evaluation_val"}[split]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "lvis"
    assert meta.json_file.endswith(
        {"minival": "lvis_v1_minival_inserted_image_name.json", "val": "lvis_od_val.json"}[split]
    )
    # The json's category names, as the official prompt (D2's lvis_v1_val uses synonyms[0]).
    assert meta.thing_classes == lvis_v1_official_names()
    assert meta.thing_classes[161] == "bull"
    assert MetadataCatalog.get("lvis_v1_val").thing_classes[161] == "horned_cow"


def test_official_lvis_chunks_fit_one_prompt_each():
    """CHUNK_SIZE 40 cuts LVIS v1 into the official 31 prompts only if no 40-name prompt needs
    more than 256 tokens of GLIP-T/L's tokenizer (else glip_d2 would split it further)."""
    from glip_d2.modeling.language_backbone import load_tokenizer

    # bert-base-uncased's vocabulary, from the bundled package (no hub access)
    tokenizer = load_tokenizer("bert-base-uncased", weights_from_checkpoint=True)
    names = lvis_v1_official_names()
    chunks = [names[i : i + 40] for i in range(0, len(names), 40)]
    assert len(chunks) == 31 and len(chunks[-1]) == 3
    for chunk in chunks:
        caption, _ = build_detection_prompt(chunk)
        assert len(tokenizer.tokenize(caption)) + 2 <= 256, caption
