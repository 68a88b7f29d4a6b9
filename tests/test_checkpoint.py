"""Official checkpoint conversion: key mapping both ways, safe loading, the convert CLI and
GLIPCheckpointer (parity by construction from the official key layout, tests/_official_keys.py)."""

import re

import pytest
import torch
from _official_keys import SMALL, official_shapes, random_state_dict
from conftest import REPO_ROOT, load_reference

from glip_d2.checkpoint import (
    GLIPCheckpointer,
    convert_official_state_dict,
    glip_d2_to_official,
    is_official_state_dict,
    load_checkpoint_file,
    official_cell_anchors,
    official_to_glip_d2_key,
    select_official_state_dict,
    swin_relative_position_index,
)
from glip_d2.convert import main as convert_main

GLIP_T = dict()  # official_shapes defaults are GLIP-T's
GLIP_L = dict(
    embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window=12, num_layers=8
)
REGENERATED = re.compile(r"(relative_position_index|cell_anchors\.\d|cls_logits\.)")


def meta_state_dict(shapes):
    return {
        k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in shapes.items()
    }


def test_key_table_generator_matches_reference_file(reference_dir):
    ref = load_reference(reference_dir, "state_dict_official_no_lang")
    shapes = official_shapes(**SMALL, text_encoder=False)
    assert set(shapes) == set(ref)
    assert {k: tuple(v.shape) for k, v in ref.items()} == {k: s for k, (s, _) in shapes.items()}


def test_convert_reference_file(reference_dir):
    ref = load_reference(reference_dir, "state_dict_official_no_lang")
    converted, dropped = convert_official_state_dict(ref)
    assert len(ref) == 276
    assert len(dropped) == 8 + 2 + 5  # relative_position_index, cls_logits, cell anchors
    assert len(converted) == 261
    assert all(v.dtype in (torch.float32,) for v in converted.values())
    # float8 storage is cast exactly
    w = ref["rpn.head.dyhead_tower.0.b_attn.attn.v_proj.weight"]
    assert w.dtype == torch.float8_e4m3fn
    assert torch.equal(converted["head.tower.0.fusion.attn.v_proj.weight"], w.float())
    assert torch.equal(
        converted["head.tower.1.dyconv.offset.bias"], ref["rpn.head.dyhead_tower.5.offset.bias"]
    )
    assert torch.equal(
        converted["backbone.bottom_up.layers.3.blocks.1.mlp.fc2.bias"],
        ref["backbone.body.layers.3.blocks.1.mlp.fc2.bias"],
    )
    assert "backbone.fpn_inner2.weight" in converted
    assert "backbone.top_blocks.p7.bias" in converted
    assert "head.tower.1.text_layer.output.LayerNorm.weight" in converted


def test_regenerated_buffers_equal_reference(reference_dir):
    ref = load_reference(reference_dir, "state_dict_official_no_lang")
    anchors = official_cell_anchors()
    for lvl in range(5):
        got, want = anchors[lvl], ref[f"rpn.anchor_generator.cell_anchors.{lvl}"]
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert anchors[0].tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    index = swin_relative_position_index(7)
    assert index.dtype == torch.int64
    assert torch.equal(index, ref["backbone.body.layers.2.blocks.1.attn.relative_position_index"])
    assert index[0, :4].tolist() == [84, 83, 82, 81]


def test_round_trip_official_to_glip_d2_and_back_is_bit_exact(reference_dir):
    ref = load_reference(reference_dir, "state_dict_official_no_lang")
    converted, _ = convert_official_state_dict(ref)
    back = glip_d2_to_official(converted)
    assert set(back) == set(ref)
    for key, value in ref.items():
        if key.startswith("rpn.head.cls_logits."):
            continue  # unused; exported as zero weight + prior bias
        assert back[key].dtype == (torch.int64 if value.dtype == torch.int64 else torch.float32)
        assert torch.equal(back[key], value.to(back[key].dtype)), key
    assert torch.equal(back["rpn.head.cls_logits.bias"], ref["rpn.head.cls_logits.bias"])
    assert back["rpn.head.cls_logits.weight"].shape == (80, 64, 1, 1)
    # and glip_d2 -> official -> glip_d2 is the identity on every tensor
    again, dropped = convert_official_state_dict({"module." + k: v for k, v in back.items()})
    assert set(again) == set(converted) and len(dropped) == 15
    assert all(torch.equal(again[k], converted[k]) for k in converted)


@pytest.mark.parametrize("sizes", [SMALL, GLIP_T, GLIP_L], ids=["small", "GLIP-T", "GLIP-L"])
def test_full_official_layout_with_extras_maps_every_key(sizes):
    shapes = official_shapes(**sizes)
    sd = meta_state_dict(shapes)
    hidden = sizes.get("hidden", 768)
    extras = {
        "language_backbone.body.model.embeddings.position_ids": (1, 512),
        "language_backbone.body.model.pooler.dense.weight": (hidden, hidden),
        "language_backbone.body.model.pooler.dense.bias": (hidden,),
        "rpn.resizer.fc.weight": (256, hidden),
        "rpn.head.mlm_head.predictions.bias": (30522,),
        "rpn.tunable_linear.weight": (1000, hidden),
    }
    for k, shape in extras.items():
        sd[k] = torch.empty(shape, device="meta")
    converted, dropped = convert_official_state_dict({"module." + k: v for k, v in sd.items()})
    assert len(converted) + len(dropped) == len(sd)
    assert "language_backbone.tunable_linear.weight" in converted
    assert not any("pooler" in k or "position_ids" in k or "resizer" in k for k in converted)
    n_layers = sizes.get("num_layers", 6)
    assert converted[f"head.tower.{n_layers - 1}.dyconv.offset.weight"].shape == (
        27,
        sizes.get("channels", 256),
        3,
        3,
    )
    assert converted[f"head.tower.{n_layers - 1}.fusion.attn.l_proj.weight"].shape == (2048, hidden)
    # back to the official layout: every kept key returns with its shape
    back = glip_d2_to_official(converted)
    kept = {k for k in sd if not REGENERATED.search(k)} - {
        k for k in extras if k != "rpn.tunable_linear.weight"
    }
    assert kept <= set(back)
    assert all(back[k].shape == sd[k].shape for k in back if k in sd)
    assert {k for k in back if k not in sd} == set()


def test_glip_t_a_without_early_fusion():
    sd = meta_state_dict(official_shapes(early_fuse=False, text_encoder=False))
    assert "rpn.head.dyhead_tower.5.offset.weight" in sd
    converted, _ = convert_official_state_dict(sd)
    assert "head.tower.5.dyconv.offset.weight" in converted
    assert not any(".fusion." in k or ".text_layer." in k for k in converted)
    back = glip_d2_to_official(converted)
    assert "rpn.head.dyhead_tower.5.offset.weight" in back


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="rpn.head.mystery.weight"):
        convert_official_state_dict({"rpn.head.mystery.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="expected a fusion block"):
        official_to_glip_d2_key("rpn.head.dyhead_tower.0.DyConv.0.conv.weight")


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"backbone.body.norm1.weight": torch.zeros(2)}, "x": _NotATensor()}, bad)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_checkpoint_file(str(bad))
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match=r"\.pkl"):
        load_checkpoint_file(str(pkl))


def test_select_model_or_ema():
    a, b = {"module.rpn.head.bias0": torch.ones(1)}, {"module.rpn.head.bias0": torch.zeros(1)}
    ckpt = {"model": a, "model_ema": b, "iteration": 5}
    assert select_official_state_dict(ckpt)["rpn.head.bias0"].item() == 1.0
    assert select_official_state_dict(ckpt, ema=True)["rpn.head.bias0"].item() == 0.0
    with pytest.raises(KeyError, match="model_ema"):
        select_official_state_dict({"model": a}, ema=True)
    assert is_official_state_dict(a)
    assert not is_official_state_dict({"head.bias0": torch.ones(1)})


def test_convert_cli(tmp_path, capsys):
    sd = random_state_dict(official_shapes(**SMALL, text_encoder=False), seed=3)
    src = tmp_path / "official.pth"
    torch.save(
        {
            "model": {"module." + k: v for k, v in sd.items()},
            "model_ema": {"module." + k: v + 1 for k, v in sd.items() if v.is_floating_point()},
        },
        src,
    )
    for ema in (False, True):
        dst = tmp_path / f"d2_{ema}.pth"
        assert convert_main([str(src), str(dst)] + (["--ema"] if ema else [])) == 0
        out = torch.load(dst, weights_only=True)
        assert out["matching_heuristics"] is False and "GLIP" in out["__author__"]
        got = out["model"]["head.bias0"]
        assert torch.equal(got, sd["rpn.head.bias0"] + (1 if ema else 0))
    # reverse export through the CLI
    back = tmp_path / "official_again.pth"
    assert convert_main(["--to-official", str(tmp_path / "d2_False.pth"), str(back)]) == 0
    again = torch.load(back, weights_only=True)["model"]
    # random values of regenerated buffers do not survive; every weight does
    assert all(
        torch.equal(again["module." + k], v) for k, v in sd.items() if not REGENERATED.search(k)
    )
    # a bad input names the problem
    assert convert_main([str(tmp_path / "missing.pth"), str(tmp_path / "x.pth")]) == 1
    assert "missing.pth" in capsys.readouterr().err


# ---------------------------------------------------------------- GLIPCheckpointer on a model


@pytest.fixture(scope="module")
def small_model():
    from conftest import reference_cfg
    from detectron2.modeling import build_model

    import glip_d2.modeling  # noqa: F401

    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    return build_model(cfg).eval(), cfg


def test_glip_d2_model_keys_match_the_official_table(small_model):
    model, _ = small_model
    shapes = official_shapes(**SMALL)
    converted, _ = convert_official_state_dict(meta_state_dict(shapes))
    model_sd = model.state_dict()
    assert set(converted) == set(model_sd)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in model_sd.items())


def test_checkpointer_loads_official_file_and_checks(small_model, tmp_path):
    from glip_d2.checkpoint import CheckpointMismatchError, GLIPCheckpointer

    model, _ = small_model
    sd = random_state_dict(official_shapes(**SMALL), seed=7)
    path = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}}, path)
    GLIPCheckpointer(model).load(str(path))
    got = model.state_dict()
    converted, _ = convert_official_state_dict(sd)
    assert all(torch.equal(got[k], v) for k, v in converted.items())  # every tensor landed
    # shape mismatch: an error naming key and both shapes
    bad = dict(sd)
    bad["rpn.head.bias_lang"] = torch.zeros(768)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=r"head.bias_lang.*\(768,\).*\(384,\)"):
        GLIPCheckpointer(model).load(str(tmp_path / "bad.pth"))
    # a missing tensor the model needs
    del bad["rpn.head.bias_lang"]
    torch.save({"model": bad}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match="head.bias_lang"):
        GLIPCheckpointer(model).load(str(tmp_path / "missing.pth"))
    # text encoder absent while the model was built to take it from the checkpoint
    no_text = {k: v for k, v in sd.items() if not k.startswith("language_backbone.")}
    torch.save({"model": no_text}, tmp_path / "no_text.pth")
    with pytest.raises(CheckpointMismatchError, match="WEIGHTS_FROM_CHECKPOINT"):
        GLIPCheckpointer(model, text_encoder_from_checkpoint=True).load(
            str(tmp_path / "no_text.pth")
        )


def test_text_encoder_detection_sets_weights_from_checkpoint(tmp_path, caplog):
    from conftest import reference_cfg

    from glip_d2.checkpoint import use_text_encoder_from_weights

    with_text = tmp_path / "with.pth"
    torch.save({"model": {"module.language_backbone.body.model.x": torch.zeros(1)}}, with_text)
    without = tmp_path / "without.pth"
    torch.save({"model": {"module.rpn.head.bias0": torch.zeros(1)}}, without)
    cfg = reference_cfg()
    cfg.MODEL.WEIGHTS = str(with_text)
    assert use_text_encoder_from_weights(cfg) is True
    assert cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT
    cfg.MODEL.WEIGHTS = str(without)
    with pytest.raises(ValueError, match="holds no text-encoder weights"):
        use_text_encoder_from_weights(cfg)
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = False
    with caplog.at_level("WARNING"):
        assert use_text_encoder_from_weights(cfg) is False
    assert "bundled-minilm" in caplog.text


@pytest.mark.parametrize("early_fuse", [True, False], ids=["GLIP-T", "GLIP-T_A"])
def test_glip_t_model_keys_and_shapes_match_the_official_table(early_fuse):
    """Full GLIP-T sizes: built on CPU, moved to meta, compared key by key with the table."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import glip_d2.modeling  # noqa: F401
    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "GLIP-T.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.GLIP.EARLY_FUSE = early_fuse
    cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = early_fuse
    model_sd = build_model(cfg).to("meta").state_dict()
    converted, _ = convert_official_state_dict(
        meta_state_dict(official_shapes(early_fuse=early_fuse))
    )
    assert set(converted) == set(model_sd)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in model_sd.items())
    assert len(model_sd) == (726 if early_fuse else 726 - 6 * (18 + 16))  # no fusion, text layers


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies mid-write leaves the earlier file, its tag and no partial file."""
    model = torch.nn.Linear(3, 2)
    checkpointer = GLIPCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    before = (tmp_path / "model_0000009.pth").read_bytes()

    def dies_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000019", iteration=19)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    resumed = GLIPCheckpointer(torch.nn.Linear(3, 2), save_dir=str(tmp_path))
    assert resumed.resume_or_load("", resume=True)["iteration"] == 9
