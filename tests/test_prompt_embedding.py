"""Prompt tuning keeps the base model: the tuned embedding as a small file, loaded beside the
unchanged base weights, changes the tuned prompt only."""

import types

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from glip_d2.checkpoint import load_prompt_embedding, save_prompt_embedding
from glip_d2.config import add_glip_config
from glip_d2.engine import PromptEmbeddingSaver
from glip_d2.predictor import GLIPPredictor
from glip_d2.text import build_detection_prompt

TUNED = ["red circle", "blue square"]
OTHER = ["green star", "purple triangle"]


def _cfg():
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file("configs/transfer/glip_small_prompt.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0  # random weights: keep every candidate
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    return cfg


def _prompt(names):
    caption, spans = build_detection_prompt(names)
    return {"caption": caption, "phrase_spans": spans, "phrase_names": list(names)}


@pytest.fixture(scope="module")
def tuned_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompt_embedding")
    torch.manual_seed(0)
    tuned = build_model(_cfg()).eval()
    base = {k: v for k, v in tuned.state_dict().items() if "tunable_linear" not in k}
    torch.save({"model": base}, tmp / "base.pth")
    with torch.no_grad():  # stands in for a prompt-tuning run
        tuned.language_backbone.tunable_linear.weight.normal_(0.0, 0.5)
    path = save_prompt_embedding(tuned, str(tmp / "tuned.safetensors"), _prompt(TUNED), "minilm")
    base_cfg = _cfg()
    base_cfg.MODEL.WEIGHTS = str(tmp / "base.pth")
    base_cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = False
    return tmp, tuned, path, base_cfg


def _same(a, b):
    return (
        torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        and torch.equal(a.scores, b.scores)
        and torch.equal(a.pred_classes, b.pred_classes)
    )


def test_round_trip_tuned_prompt_only(tuned_setup):
    tmp, tuned, path, base_cfg = tuned_setup
    assert (tmp / "tuned.safetensors").stat().st_size < 120_000  # 64 x 384 floats + ids
    plain = GLIPPredictor(base_cfg)
    with_embedding = GLIPPredictor(base_cfg, prompt_embedding=path)
    assert plain.model.language_backbone.tunable_linear is None
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)

    data, _ = plain.prepare(image, TUNED)  # class names -> the model builds the prompt
    with torch.no_grad():
        reference = tuned([data])[0]["instances"]  # the tuned model itself
    assert len(reference) > 10
    out = with_embedding(image, TUNED)
    assert out["phrases"] == TUNED and _same(out["instances"], reference)

    # Both vocabularies in one batch (one text-encoder call of two rows): the loaded embedding
    # changes the tuned prompt's row only; the base vocabulary's row is the base model's.
    both = with_embedding.predict_batch([image, image], [TUNED, OTHER])
    base = plain.predict_batch([image, image], [TUNED, OTHER])
    with torch.no_grad():
        tuned_both = tuned([data, plain.prepare(image, OTHER)[0]])
    assert _same(both[0]["instances"], tuned_both[0]["instances"])
    assert _same(both[1]["instances"], base[1]["instances"])
    assert not _same(base[0]["instances"], tuned_both[0]["instances"])  # the embedding matters
    # ungated (official behaviour), the table would shift the other prompt as well
    assert not _same(tuned_both[1]["instances"], base[1]["instances"])


def test_file_checks_name_the_fault(tuned_setup, tmp_path):
    from safetensors.torch import save_file

    _, tuned, path, base_cfg = tuned_setup
    with pytest.raises(ValueError, match="no prompt-tuning table.*PROMPT_EMBEDDING"):
        load_prompt_embedding(GLIPPredictor(base_cfg).model, path)
    wide = str(tmp_path / "wide.safetensors")
    meta = {"format": "glip_d2.prompt_embedding", "hidden_size": "768", "max_query_len": "64"}
    save_file({"prompt_embedding": torch.zeros(64, 768)}, wide, metadata=meta)
    with pytest.raises(ValueError, match="text width of 768.*has 384"):
        load_prompt_embedding(tuned, wide)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_prompt_embedding(tuned, str(tmp_path / "missing.safetensors"))


def test_saved_at_the_end_of_training_with_the_fixed_prompt(tuned_setup, tmp_path):
    _, tuned, _, _ = tuned_setup
    name = "glip_test_prompt_tuning_train"
    MetadataCatalog.get(name).set(
        thing_classes=["kitty", "square"], prompt_overrides={"kitty": {"name": "red circle"}}
    )
    cfg = _cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.OUTPUT_DIR = str(tmp_path)
    saver = PromptEmbeddingSaver(cfg)
    saver.trainer = types.SimpleNamespace(iter=4, max_iter=10, model=tuned, ema=None)
    saver.after_train()  # interrupted: nothing written
    assert not (tmp_path / "prompt_embedding.safetensors").exists()
    saver.trainer.iter = 9
    saver.after_train()
    loaded = load_prompt_embedding(tuned, str(tmp_path / "prompt_embedding.safetensors"))
    assert loaded.prompt["caption"] == "red circle. square"
    assert loaded.resolve(["kitty", "square"])["caption"] == "red circle. square"
    assert loaded.resolve(OTHER) == OTHER
    tuned.language_backbone.tuned_input_ids = None  # back to the ungated module-scoped model
