"""Caption retrieval: the metrics on hand-made score matrices, the retrieval sets' loaders, and
the evaluation of a tiny model through GLIPTrainer.test."""

import json

import cv2
import numpy as np
import pytest
import torch

from glip_d2.evaluation.retrieval import (
    best_match_ranks,
    caption_table,
    random_ranking_recalls,
    rerank_scores,
    retrieval_recalls,
    top_k_pairs,
)

CAPTIONS = [["a dog", "a cat"], ["a car"], ["a dog"]]
SCORES = torch.tensor(
    [
        [0.1, 0.9, 0.5, 0.2],  # image 0: best match "a cat" first -> rank 0
        [0.8, 0.7, 0.6, 0.1],  # image 1: "a car" behind two others -> rank 2
        [0.3, 0.4, 0.9, 0.35],  # image 2: "a dog" (either copy) behind two -> rank 2
    ]
)


def test_caption_table_matches_identical_captions():
    texts, matches = caption_table(CAPTIONS)
    assert texts == ["a dog", "a cat", "a car", "a dog"]
    # "a dog" of image 2 also matches image 0 (and the other way round), word for word.
    assert matches.int().tolist() == [[1, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1]]


def test_recalls_on_known_ranks():
    _, matches = caption_table(CAPTIONS)
    assert best_match_ranks(SCORES, matches).tolist() == [0, 2, 2]
    # Caption queries: "a dog" (best 0.3, image 1 above) 1, "a cat" 0, "a car" 1, "a dog" 0.
    assert best_match_ranks(SCORES.t(), matches.t()).tolist() == [1, 0, 1, 0]
    r = retrieval_recalls(SCORES, matches, ks=(1, 2, 5))
    assert r["i2t_R@1"] == pytest.approx(100 / 3)
    assert r["i2t_R@2"] == pytest.approx(100 / 3)
    assert r["i2t_R@5"] == 100.0
    assert (r["t2i_R@1"], r["t2i_R@2"], r["t2i_R@5"]) == (50.0, 100.0, 100.0)
    assert r["mean_R"] == pytest.approx((200 / 3 + 100 + 250) / 6)
    # A tie with a non-match counts against the model.
    tied = torch.tensor([[0.5, 0.5]])
    assert best_match_ranks(tied, torch.tensor([[True, False]])).tolist() == [1]


def test_itm_reranking_of_the_top_k():
    _, matches = caption_table(CAPTIONS)
    per_image, per_text = top_k_pairs(SCORES, 2)
    assert per_image.tolist() == [[1, 2], [0, 1], [2, 1]]
    assert per_text.tolist() == [[1, 2], [0, 1], [2, 1], [2, 0]]
    pairs = {(i, t) for i, row in enumerate(per_image.tolist()) for t in row}
    pairs |= {(i, t) for t, col in enumerate(per_text.tolist()) for i in col}
    # ITM knows the matches: +1 for a matching pair, -1 otherwise.
    itm = {(i, t): 1.0 if matches[i, t] else -1.0 for i, t in pairs}
    i2t, t2i = rerank_scores(SCORES, 2, itm)
    assert i2t[0].tolist() == [float("-inf"), 1.0, -1.0, float("-inf")]
    r = retrieval_recalls(i2t, matches, t2i, ks=(1,))
    # Images 1 and 2 have no match in their ITC top 2: re-ranking cannot recover them; every
    # caption has one in its top 2 images.
    assert r["i2t_R@1"] == pytest.approx(100 / 3) and r["t2i_R@1"] == 100.0


def test_random_ranking_recalls():
    one = torch.tensor([[True, False, False, False]])
    assert random_ranking_recalls(one, ks=(1, 5))["i2t_R@1"] == pytest.approx(25.0)
    assert random_ranking_recalls(one, ks=(1, 5))["i2t_R@5"] == pytest.approx(100.0)
    two = torch.tensor([[True, True, False, False]])
    # miss the top 2: (2/4) * (1/3)
    assert random_ranking_recalls(two, ks=(2,))["i2t_R@2"] == pytest.approx(100 * (1 - 1 / 6))


# -------------------------------------------------------------------------------- datasets


def test_retrieval_loaders(tmp_path):
    from glip_d2.data.datasets import load_caption_retrieval_json, load_grounding_captions

    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 7,
             "sentences": [{"raw": "one"}, {"raw": "two"}]},
            {"filepath": "train2014", "filename": "b.jpg", "split": "train", "cocoid": 8,
             "sentences": [{"raw": "three"}]},
        ]
    }  # fmt: skip
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    records = load_caption_retrieval_json(str(tmp_path / "k.json"), "root", "k")
    assert records == [
        {"file_name": "root/val2014/a.jpg", "image_id": 7, "captions": ["one", "two"],
         "dataset_name": "k"}
    ]  # fmt: skip
    listed = [{"image": "val2014/a.jpg", "caption": ["x", "y"]}, {"image": "b.jpg", "caption": "z"}]
    (tmp_path / "l.json").write_text(json.dumps(listed))
    records = load_caption_retrieval_json(str(tmp_path / "l.json"), "root")
    assert [r["captions"] for r in records] == [["x", "y"], ["z"]]
    assert records[1]["file_name"] == "root/b.jpg"
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "c.jpg", "caption": []}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 0: needs one or more non-empty"):
        load_caption_retrieval_json(str(tmp_path / "bad.json"), "root")
    with pytest.raises(ValueError, match="no image of split 'val'"):
        load_caption_retrieval_json(str(tmp_path / "k.json"), "root", split="val")
    grounding = {
        "images": [
            {"id": 1, "file_name": "0.jpg", "caption": "a red circle.", "original_img_id": 1,
             "height": 64, "width": 64},
            {"id": 2, "file_name": "0.jpg", "caption": "the red circle", "original_img_id": 1,
             "height": 64, "width": 64},
            {"id": 3, "file_name": "1.jpg", "caption": "a blue star.", "original_img_id": 2},
        ],
        "annotations": [],
    }  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(grounding))
    records = load_grounding_captions(str(tmp_path / "g.json"), "img")
    assert [(r["file_name"], r["image_id"], r["captions"]) for r in records] == [
        ("img/0.jpg", 1, ["a red circle.", "the red circle"]),
        ("img/1.jpg", 2, ["a blue star."]),
    ]


def test_predefined_retrieval_sets_are_registered():
    from detectron2.data import MetadataCatalog

    import glip_d2  # noqa: F401
    from glip_d2.engine import is_retrieval_set

    for name in (
        "coco_2014_karpathy_test_retrieval",
        "flickr30k_karpathy_test_retrieval",
        "glip_synth_val_retrieval",
    ):
        assert is_retrieval_set(name)
        assert MetadataCatalog.get(name).json_file.endswith(".json")
    assert not is_retrieval_set("glip_synth_val")


# ------------------------------------------------------------------- evaluation, end to end


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from detectron2.data import DatasetCatalog

    from glip_d2.data.datasets import register_caption_retrieval

    root = tmp_path_factory.mktemp("retrieval")
    rng = np.random.default_rng(0)
    entries = []
    for i, captions in enumerate([["a red circle", "a circle"], ["a blue star"], ["a circle"]]):
        cv2.imwrite(str(root / f"{i}.jpg"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
        entries.append({"image": f"{i}.jpg", "caption": captions})
    (root / "test.json").write_text(json.dumps(entries))
    name = "tiny_retrieval_test"
    if name not in DatasetCatalog.list():
        register_caption_retrieval(name, str(root / "test.json"), str(root))
    return name


def _model(itm=True):
    from conftest import reference_cfg
    from detectron2.modeling import build_model

    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 32
    cfg.MODEL.GLIP.XVLM.ITC_WEIGHT = 1.0
    cfg.MODEL.GLIP.XVLM.ITM_WEIGHT = 1.0 if itm else 0.0
    cfg.MODEL.GLIP.EARLY_FUSE = False  # the cross encoder path; deep fusion: test_xvlm.py
    cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = False
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_retrieval_through_the_trainer(tiny_set):
    from glip_d2.engine import GLIPTrainer
    from glip_d2.evaluation.retrieval import caption_table as table

    model, cfg = _model()
    cfg.DATASETS.TEST = (tiny_set,)
    cfg.TEST.GLIP.RETRIEVAL_ITM_TOP_K = 2
    results = GLIPTrainer.test(cfg, model)  # one set: D2's unwrapped layout
    assert set(results) == {"retrieval", "retrieval_itm", "retrieval_random"}
    # The ITC recalls are those of the model's own embeddings.
    from detectron2.data import DatasetCatalog

    from glip_d2.data.retrieval_mapper import RetrievalImageMapper

    records = DatasetCatalog.get(tiny_set)
    texts, matches = table([r["captions"] for r in records])
    mapper = RetrievalImageMapper(cfg)
    batch = [mapper(dict(r, index=i)) for i, r in enumerate(records)]
    assert model.training  # evaluate_retrieval restored the mode; compare in eval mode
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        feats = model.backbone(images.tensor)
        features = [feats[f] for f in model.in_features]
        scores = model.xvlm.image_embeddings(features, images.image_sizes) @ (
            model.xvlm.text_embeddings(model.language_backbone, texts).t()
        )
    expected = retrieval_recalls(scores, matches)
    assert results["retrieval"] == pytest.approx(expected)
    assert results["retrieval_random"]["t2i_R@1"] == pytest.approx(100 * (1 + 2 + 1 + 2) / 12)
    assert all(0.0 <= v <= 100.0 for v in results["retrieval_itm"].values())
    assert results["retrieval_itm"]["i2t_R@5"] == 100.0  # 4 captions


def test_retrieval_needs_the_itc_and_itm_heads(tiny_set):
    from glip_d2.engine import evaluate_retrieval

    model, cfg = _model(itm=False)
    cfg.TEST.GLIP.RETRIEVAL_ITM_TOP_K = 2
    with pytest.raises(ValueError, match="RETRIEVAL_ITM_TOP_K=2 re-ranks with ITM"):
        evaluate_retrieval(cfg, model, tiny_set)
    model.xvlm = None
    with pytest.raises(ValueError, match="needs the model's ITC embeddings"):
        evaluate_retrieval(cfg, model, tiny_set)
