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


# ---------------------------------------------------------------- what the checkpointer refuses


def test_save_refuses_non_finite_weights_and_keeps_the_last_checkpoint(tmp_path):
    from glip_d2.checkpoint import NonFiniteCheckpointError
    from glip_d2.engine import ModelEMA

    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    checkpointer = GLIPCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.add_checkpointable("ema", ema)
    checkpointer.save("model_0000009", iteration=9)
    with torch.no_grad():
        model.weight[1, 2] = float("nan")
        model.bias[0] = float("inf")
    with pytest.raises(
        NonFiniteCheckpointError, match=r"'model/weight' holds 1 NaN/Inf values \(of 6\)"
    ) as err:
        checkpointer.save("model_0000019", iteration=19)
    assert "model_0000009.pth" in str(err.value)  # the last finite checkpoint
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    ema.update(model)  # the average was taken while the weights were non-finite
    ema.shadow["bias"][1] = float("nan")
    with pytest.raises(NonFiniteCheckpointError, match="'ema/shadow/bias'"):
        checkpointer.save("model_final", iteration=29)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"


def test_load_refuses_non_finite_tensors_naming_file_and_key(tmp_path, small_model):
    from glip_d2.checkpoint import NonFiniteCheckpointError

    # a training checkpoint corrupted on disk: --resume must not train on from NaN
    good = torch.nn.Linear(3, 2)
    GLIPCheckpointer(good, save_dir=str(tmp_path)).save("model_0000009", iteration=9)
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    data["model"]["bias"][1] = float("nan")
    torch.save(data, tmp_path / "model_0000009.pth")
    resumed = GLIPCheckpointer(torch.nn.Linear(3, 2), save_dir=str(tmp_path))
    with pytest.raises(NonFiniteCheckpointError, match=r"model_0000009.pth: tensor 'model/bias'"):
        resumed.resume_or_load("", resume=True)
    # optimizer state counts too
    data["model"]["bias"][1] = 0.0
    data["optimizer"] = {"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}
    torch.save(data, tmp_path / "model_0000009.pth")
    with pytest.raises(NonFiniteCheckpointError, match="'optimizer/state/0/exp_avg'"):
        resumed.resume_or_load("", resume=True)
    # an official file: the key is named after conversion
    model, _ = small_model
    sd = random_state_dict(official_shapes(**SMALL), seed=7)
    sd["rpn.head.bias0"] = torch.tensor([float("nan")])
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, tmp_path / "official.pth")
    with pytest.raises(NonFiniteCheckpointError, match="'model/head.bias0'"):
        GLIPCheckpointer(model).load(str(tmp_path / "official.pth"))


def test_extra_tensors_are_refused_unless_allowed(small_model, tmp_path):
    """A 3-layer head into the 2-layer model used to load with fvcore's "not used" warning
    (and other predictions than the checkpoint's model)."""
    from glip_d2.checkpoint import CheckpointMismatchError

    model, _ = small_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    three = official_shapes(**{**SMALL, "num_layers": 3}, text_encoder=False)
    sd = random_state_dict(three, seed=5)
    path = tmp_path / "three_layers.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"head\.tower\.2\.") as err:
        GLIPCheckpointer(model).load(str(path))
    assert "MODEL.GLIP.ALLOW_UNEXPECTED_KEYS" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    # explicitly allowed: the extra layer is dropped, the rest loads (the text encoder, not
    # in this file, keeps its weights)
    GLIPCheckpointer(model, allow_unexpected_keys=True, text_encoder_from_checkpoint=False).load(
        str(path)
    )
    converted, _ = convert_official_state_dict(sd)
    got = model.state_dict()
    assert torch.equal(
        got["head.tower.1.dyconv.offset.weight"], converted["head.tower.1.dyconv.offset.weight"]
    )
    # a prompt-tuned checkpoint into a model without the table says which flag is missing
    tuned = random_state_dict(official_shapes(**SMALL, text_encoder=False), seed=6)
    tuned["rpn.tunable_linear.weight"] = torch.zeros(1000, 384)
    torch.save({"model": tuned}, tmp_path / "tuned.pth")
    with pytest.raises(CheckpointMismatchError, match="TUNABLE_LINEAR True"):
        GLIPCheckpointer(model).load(str(tmp_path / "tuned.pth"))
    # buffers every model rebuilds from its config are not "unexpected" (a partial file)
    own = {"backbone.fpn_inner2.weight": model.state_dict()["backbone.fpn_inner2.weight"]}
    own["language_backbone.model.embeddings.position_ids"] = torch.arange(512)[None]
    own["backbone.bottom_up.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49)
    torch.save({"model": own}, tmp_path / "own.pth")
    GLIPCheckpointer(model, text_encoder_from_checkpoint=False).load(str(tmp_path / "own.pth"))


def test_config_key_allows_extra_tensors(small_model, tmp_path):
    """MODEL.GLIP.ALLOW_UNEXPECTED_KEYS reaches the checkpointer (here the predictor's)."""
    from glip_d2.predictor import GLIPPredictor

    model, cfg = small_model
    own = dict(model.state_dict())
    own["head.tower.2.dyconv.offset.weight"] = torch.zeros(27, 64, 3, 3)
    torch.save({"model": own}, tmp_path / "extra.pth")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp_path / "extra.pth")
    cfg.MODEL.GLIP.ALLOW_UNEXPECTED_KEYS = True
    predictor = GLIPPredictor(cfg)
    got = predictor.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_imagenet_backbone_checkpoint_by_name_heuristics_loads(small_model, tmp_path):
    """D2 model-zoo style: ImageNet backbone weights under their own names, matched by D2's
    suffix heuristics; the classifier ("head.*", which used to make the file look like a
    whole detector) and the other parts of the detector are not needed."""
    model, _ = small_model
    key = "backbone.bottom_up.layers.0.blocks.0.norm1.weight"
    value = torch.rand(model.state_dict()[key].shape)
    ckpt = {
        "model": {
            "layers.0.blocks.0.norm1.weight": value,
            "head.weight": torch.rand(1000, 384),  # the ImageNet classifier of a Swin file
            "head.bias": torch.rand(1000),
        },
        "matching_heuristics": True,
    }
    # the fixture's text encoder was built to come from the checkpoint
    text = {k: v for k, v in model.state_dict().items() if k.startswith("language_backbone.model.")}
    ckpt["model"].update({k[len("language_backbone.") :]: v for k, v in text.items()})
    torch.save(ckpt, tmp_path / "imagenet.pth")
    GLIPCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    assert torch.equal(model.state_dict()[key], value)


def test_text_encoder_built_for_the_checkpoint_must_be_in_it(small_model, tmp_path):
    """The model was built with WEIGHTS_FROM_CHECKPOINT (a random text encoder): a checkpoint
    without it used to load and leave the encoder random without a word."""
    from glip_d2.checkpoint import CheckpointMismatchError

    model, _ = small_model
    assert model.language_backbone.weights_from_checkpoint  # what GLIPCheckpointer reads
    sd = random_state_dict(official_shapes(**SMALL, text_encoder=False), seed=8)
    torch.save({"model": sd}, tmp_path / "no_text.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="WEIGHTS_FROM_CHECKPOINT False") as err:
        GLIPCheckpointer(model).load(str(tmp_path / "no_text.pth"))  # no explicit flag
    assert "lacks" in str(err.value) and "language_backbone.model." in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    # also a partial (backbone-only) checkpoint
    backbone = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointMismatchError, match="WEIGHTS_FROM_CHECKPOINT"):
        GLIPCheckpointer(model).load(str(tmp_path / "backbone.pth"))
    # a text encoder built with its own pretrained weights may keep them
    GLIPCheckpointer(model, text_encoder_from_checkpoint=False).load(str(tmp_path / "no_text.pth"))


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.pth", b"", "EOFError"),
        ("text.pth", b"hello, not a checkpoint\n", "not a torch checkpoint"),
        ("random.pt", bytes(range(7, 250)), "not a torch checkpoint"),
        ("empty.safetensors", b"", "not a safetensors file"),
        ("fake.safetensors", b"{'model': 1} but not safetensors", "not a safetensors file"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as err:
        load_checkpoint_file(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        GLIPCheckpointer(torch.nn.Linear(3, 2)).load(str(path))


def test_convert_cli_reports_every_user_error(tmp_path, capsys):
    sd = random_state_dict(official_shapes(**SMALL, text_encoder=False), seed=3)
    src = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, src)
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    cases = [
        ([str(src), str(tmp_path / "missing_folder" / "out.pth")], "destination folder"),
        ([str(src), str(tmp_path / "folder")], "is a folder"),
        ([str(tmp_path / "folder"), str(tmp_path / "out.pth")], "is a folder"),
        ([str(tmp_path / "empty.pth"), str(tmp_path / "out.pth")], "empty.pth"),
        ([str(src), str(src)], "the same file"),
        (["--to-official", str(src), str(tmp_path / "out.pth")], "already in the official"),
        (
            ["--to-official", str(src), str(tmp_path / "o.pth"), "--config-file", "nope.yaml"],
            "nope.yaml",
        ),
    ]
    for argv, message in cases:
        assert convert_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.pth", "folder", "official.pth"]
