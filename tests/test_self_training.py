"""Self-training end to end at toy scale: glip_synth's caption split -> a teacher's pseudo-labels
(``python -m glip_d2.pseudo_label``) -> a student step on boxed + pseudo-labelled data; and the
experiment script's pseudo-label precision / recall (demo/self_training.py)."""

import importlib.util
import json

import pytest
import torch
from conftest import REPO_ROOT
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from datasets.prepare_glip_synth import generate_glip_synth
from glip_d2 import add_glip_config
from glip_d2.data.synthetic import ALL_CLASSES, SEEN_CLASSES

CONFIG = REPO_ROOT / "configs" / "quick_schedules" / "glip_small_instant_test.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("selftrain") / "glip_synth"
    generate_glip_synth(str(root), {"train": 3, "val": 1, "test_heldout": 1, "captions": 3})
    return root


def test_teacher_to_pseudo_labels_to_a_student_step(synth, tmp_path):
    from glip_d2.data.build import build_grounding_train_loader
    from glip_d2.data.datasets import register_grounding_coco, register_pseudo_label_sets
    from glip_d2.engine import GLIPTrainer, build_glip_optimizer
    from glip_d2.pseudo_label import main as pseudo_label

    # teacher: the tiny test config at its random initialisation, saved as a checkpoint
    torch.manual_seed(0)
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    teacher = GLIPTrainer.build_model(cfg)
    weights = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, weights)
    output = tmp_path / "pseudo.json"
    args = [
        "--config-file",
        str(CONFIG),
        "--weights",
        str(weights),
        "--captions",
        str(synth / "annotations" / "captions.json"),
        "--image-root",
        str(synth / "images" / "captions"),
        "--output",
        str(output),
        "--batch-size",
        "2",
        "--text-threshold",
        "0",
        "--conf",
        "0.05",
        "MODEL.GLIP.INFERENCE_TH",
        "0.0",
    ]
    pseudo_label(args)
    records = json.loads(output.read_text())
    assert [r["file_name"] for r in records] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    truth = json.loads((synth / "annotations" / "captions_truth.json").read_text())
    assert [r["caption"] for r in records] == [im["caption"] for im in truth["images"]]
    entity = records[0]["entities"][0]
    assert entity["phrase"] == records[0]["caption"].lower().rstrip(".")  # threshold 0: all
    assert entity["scores"] == sorted(entity["scores"], reverse=True)
    assert min(entity["scores"]) > 0.05 and len(entity["boxes"][0]) == 4
    assert not (tmp_path / "pseudo.json.parts").exists()

    # student: glip_synth-like boxed data + the pseudo-labelled captions, mixed 1:1
    register_grounding_coco(
        "test_selftrain_boxed",
        str(synth / "annotations" / "instances_train.json"),
        str(synth / "images" / "train"),
        metadata={
            "thing_classes": list(SEEN_CLASSES),
            "thing_dataset_id_to_contiguous_id": {
                ALL_CLASSES.index(n) + 1: i for i, n in enumerate(SEEN_CLASSES)
            },
        },
    )
    cfg.DATASETS.TRAIN = ("test_selftrain_boxed", "test_selftrain_pseudo")
    cfg.DATASETS.GLIP.TRAIN_RATIOS = [1.0, 1.0]
    cfg.DATASETS.GLIP.PSEUDO_LABEL_SETS = [
        ["test_selftrain_pseudo", str(output), str(synth / "images" / "captions")]
    ]
    cfg.DATASETS.GLIP.CAPTION_CONF = 0.05
    cfg.DATASETS.GLIP.NO_RANDOM_PACK_PROBABILITY = 0.0  # always pack: negatives are checked
    register_pseudo_label_sets(cfg)
    register_pseudo_label_sets(cfg)  # again (every process of a launch): nothing changes
    assert MetadataCatalog.get("test_selftrain_pseudo").pseudo_label_captions
    loader = iter(build_grounding_train_loader(cfg))
    for _ in range(10):  # the seeded sampler reaches a caption record within a few batches
        batch = next(loader)
        captions = [x for x in batch if x["dataset_name"] == "test_selftrain_pseudo"]
        if captions:
            break
    assert captions, "no pseudo-labelled record in 10 batches"
    x = captions[0]
    own = next(r["caption"] for r in records if r["file_name"] in x["file_name"])
    assert own in x["caption"] and len(x["instances"]) > 0
    student = GLIPTrainer.build_model(cfg).train()
    optimizer = build_glip_optimizer(cfg, student)
    losses = student(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()


def test_changed_pseudo_label_set_is_refused():
    from glip_d2.data.datasets import register_pseudo_label_sets

    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.GLIP.PSEUDO_LABEL_SETS = [["test_selftrain_refused", "/a.json", "/img"]]
    register_pseudo_label_sets(cfg)
    cfg.DATASETS.GLIP.CAPTION_CONF = 0.3
    with pytest.raises(ValueError, match="already registered"):
        register_pseudo_label_sets(cfg)
    cfg.DATASETS.GLIP.PSEUDO_LABEL_SETS = [["only-a-name"]]
    with pytest.raises(ValueError, match=r"PSEUDO_LABEL_SETS\[0\] must be"):
        register_pseudo_label_sets(cfg)


def _experiment():
    spec = importlib.util.spec_from_file_location(
        "self_training", REPO_ROOT / "demo" / "self_training.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pseudo_label_precision_and_recall(tmp_path):
    from glip_d2.evaluation import phrase_category, pseudo_label_quality

    names = {i + 1: n for i, n in enumerate(ALL_CLASSES)}
    blue_star, red_circle = ALL_CLASSES.index("blue star") + 1, ALL_CLASSES.index("red circle") + 1
    assert phrase_category("small Blue Star", names) == blue_star
    assert phrase_category("blue", names) is None
    assert phrase_category("red circle and blue star", names) is None  # two categories
    truth = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": i, "name": n} for i, n in names.items()],
        "annotations": [
            {"image_id": 1, "category_id": blue_star, "bbox": [0, 0, 10, 10], "mentioned": True},
            {"image_id": 1, "category_id": red_circle, "bbox": [20, 20, 10, 10], "mentioned": True},
            {"image_id": 1, "category_id": red_circle, "bbox": [40, 0, 10, 10], "mentioned": False},
        ],
    }
    pseudo = [
        {
            "file_name": "a.jpg",
            "entities": [
                {
                    "phrase": "blue star",
                    "boxes": [[0, 0, 10, 11], [0, 0, 10, 10]],
                    "scores": [0.9, 0.8],
                },
                {
                    "phrase": "red circle",
                    "boxes": [[0, 0, 10, 10], [21, 21, 31, 31]],
                    "scores": [0.7, 0.4],
                },
            ],
        }
    ]
    (tmp_path / "t.json").write_text(json.dumps(truth))
    (tmp_path / "p.json").write_text(json.dumps(pseudo))
    q = pseudo_label_quality(str(tmp_path / "p.json"), str(tmp_path / "t.json"), 0.5, [blue_star])
    # kept (score > 0.5): blue star x2 (one true, one duplicate), red circle on the blue star
    assert q["pseudo_boxes"] == 3 and q["objects"] == 3 and q["mentioned_objects"] == 2
    assert q["precision"] == pytest.approx(100 / 3, abs=0.01)  # 1 of 3 right
    assert q["recall_mentioned"] == 50.0 and q["recall_all"] == pytest.approx(100 / 3, abs=0.01)
    assert q["precision_class_agnostic"] == pytest.approx(100 / 3, abs=0.01)  # one box per object
    assert q["heldout_precision"] == 50.0 and q["heldout_recall_mentioned"] == 100.0
    q = pseudo_label_quality(str(tmp_path / "p.json"), str(tmp_path / "t.json"), 0.3)
    assert q["precision"] == 50.0 and q["recall_mentioned"] == 100.0  # the 0.4 red circle too


def test_true_phrases_for_the_oracle_run(synth, tmp_path):
    from glip_d2.pseudo_label import load_caption_pairs

    pairs = _experiment().captions_with_true_phrases(
        str(synth / "annotations" / "captions_truth.json")
    )
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs))
    loaded = load_caption_pairs(str(path))
    assert len(loaded) == 3 and loaded == pairs
    for pair in loaded:
        for ((s, e),) in pair["phrase_spans"]:
            assert any(pair["caption"][s:e].endswith(c) for c in ALL_CLASSES)
