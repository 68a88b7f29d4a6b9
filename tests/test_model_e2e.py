"""GLIPDetector end to end: every config builds, training and inference paths, prompt batching,
chunked vocabularies, input errors, and a small overfitting run."""

import contextlib

import pytest
import torch
from conftest import detector_variant
from detection_sets import assert_same_instances as _same
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

from glip_d2.config import add_glip_config
from glip_d2.modeling.meta_arch import GLIPDetector
from glip_d2.structures import pairwise_iou_legacy
from glip_d2.text.prompts import build_detection_prompt


def _cfg(name, **overrides):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(f"configs/{name}.yaml")
    cfg.MODEL.DEVICE = "cpu"
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


@contextlib.contextmanager
def _parameters_on_meta():
    """Register every new parameter on the meta device: initialisation becomes a no-op.

    (A ``torch.device("meta")`` context cannot build Detectron2's Swin, which calls
    ``.item()`` while computing drop-path rates.)
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@pytest.mark.parametrize(
    "name, checks",
    [
        (
            "GLIP-T",
            {
                "backbone.bottom_up.layers.2.blocks.5.attn.qkv.weight": (1152, 384),
                "backbone.fpn_inner4.weight": (256, 768, 1, 1),
                "head.tower.5.fusion.attn.v_proj.weight": (2048, 256),
                "head.tower.5.text_layer.intermediate.dense.weight": (3072, 768),
                "head.dot_product_projection_text.weight": (256, 768),
                "language_backbone.model.embeddings.word_embeddings.weight": (30522, 768),
            },
        ),
        (
            "GLIP-T_A",
            {
                "head.tower.5.dyconv.offset.weight": (27, 256, 3, 3),
                "head.dot_product_projection_text.weight": (256, 768),
            },
        ),
        (
            "GLIP-L",
            {
                "backbone.bottom_up.layers.2.blocks.17.attn.relative_position_bias_table": (
                    529,
                    24,
                ),
                "backbone.bottom_up.patch_embed.proj.weight": (192, 3, 4, 4),
                "backbone.fpn_inner4.weight": (256, 1536, 1, 1),
                "head.tower.7.fusion.gamma_l": (768,),
            },
        ),
    ],
)
def test_full_size_configs_build_on_meta(name, checks):
    """Official sizes, built on the meta device: no weights are allocated or downloaded."""
    cfg = _cfg(name, **{"MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT": True})
    cfg.MODEL.DEVICE = "meta"  # build_model's final .to() then moves the buffers too
    with _parameters_on_meta():
        model = build_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert isinstance(model, GLIPDetector)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in checks.items():
        assert shapes[key] == shape, key
    layers = cfg.MODEL.GLIP.NUM_LAYERS
    assert len(model.head.tower) == layers
    fused = any(k.startswith("head.tower.0.fusion.") for k in shapes)
    assert fused == (name != "GLIP-T_A")
    assert model.head.tower[0].fusion.gamma_v.shape == (256,) if fused else True


@pytest.mark.parametrize(
    "name",
    [
        "synthetic/glip_small_synth",
        "synthetic/glip_small_synth_fused",
        "quick_schedules/glip_small_instant_test",
    ],
)
def test_recipe_configs_build_with_their_settings(name):
    """The main job's and the tests' configs load (every key known) and build on CPU."""
    cfg = _cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, GLIPDetector)
    assert model.head.log_scale.item() == cfg.MODEL.GLIP.LOG_SCALE
    assert len(model.head.tower) == cfg.MODEL.GLIP.NUM_LAYERS == 2
    frozen = cfg.MODEL.LANGUAGE_BACKBONE.FREEZE
    assert all(p.requires_grad != frozen for p in model.language_backbone.parameters())


@pytest.fixture(scope="module")
def small():
    """GLIP-small with a low threshold so that untrained weights give detections."""
    torch.manual_seed(0)
    # 64-token prompts keep the text side cheap; chunking works the same at any width.
    cfg = _cfg(
        "GLIP-small",
        **{
            "MODEL.GLIP.INFERENCE_TH": 0.0,
            "TEST.DETECTIONS_PER_IMAGE": 30,
            "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 64,
        },
    )
    return build_model(cfg).eval()


def _image(seed, h=64, w=96):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _run(model, inputs):
    with torch.no_grad():
        return [o["instances"] for o in model(inputs)]


def test_small_train_forward_backward(small):
    inst = Instances((96, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]))
    inst.gt_classes = torch.tensor([1, 0])
    inputs = [
        {
            "image": _image(0, 96, 128),
            "caption": "a red square and a blue disc",
            "phrase_spans": [[[2, 12]], [[19, 28]]],
            "instances": inst,
        },
        {
            "image": _image(1, 80, 112),
            "class_names": ["cat", "dog"],
            "instances": Instances(
                (80, 112),
                gt_boxes=Boxes(torch.tensor([[5.0, 5.0, 50.0, 60.0]])),
                gt_classes=torch.tensor([1]),
            ),
        },
    ]
    small.train()
    try:
        losses = small(inputs)
    finally:
        small.eval()
    assert set(losses) == {"loss_dot_product_token", "loss_reg", "loss_centerness"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert small.head.bias0.grad is not None
    assert small.backbone.bottom_up.patch_embed.proj.weight.grad.abs().sum() > 0
    small.zero_grad(set_to_none=True)


def test_batch_equals_each_alone(small):
    """Same-size images (padding changes results: docs/OFFICIAL_BEHAVIOURS.md) with different
    prompts."""
    a = {
        "image": _image(2),
        "caption": "a red square",
        "phrase_spans": [[[2, 12]]],
        "height": 192,
        "width": 256,
    }
    b = {"image": _image(3), "class_names": ["cat", "dog", "traffic light"]}
    both = _run(small, [a, b])
    alone = _run(small, [a]) + _run(small, [b])
    assert both[0].image_size == (192, 256) and both[1].image_size == (64, 96)
    assert len(both[0]) > 0 and int(both[1].pred_classes.max()) <= 2
    for x, y in zip(both, alone, strict=True):
        _same(x, y)


def test_chunked_vocabulary(small):
    names = ["cat", "dog", "traffic light", "zebra", "bus", "potted plant"]
    image = {"image": _image(4)}
    whole = _run(small, [{**image, "class_names": names}])[0]
    # A chunk size that holds every name is the unchunked prompt.
    _same(_run(detector_variant(small, chunk_size=6), [{**image, "class_names": names}])[0], whole)
    # Chunks of 2: the concatenation of three runs, each with its chunk's own prompt, with
    # phrase ids mapped back to the vocabulary; no NMS across chunks.
    chunked = _run(
        detector_variant(small, chunk_size=2, chunk_batch=3), [{**image, "class_names": names}]
    )
    one_by_one = _run(
        detector_variant(small, chunk_size=2, chunk_batch=1), [{**image, "class_names": names}]
    )
    _same(chunked[0], one_by_one[0])
    parts = []
    for start in range(0, 6, 2):
        caption, spans = build_detection_prompt(names[start : start + 2])
        (inst,) = _run(small, [{**image, "caption": caption, "phrase_spans": spans}])
        inst.pred_classes = inst.pred_classes + start
        parts.append(inst)
    _same(chunked[0], Instances.cat(parts))
    assert set(chunked[0].pred_classes.tolist()) == set(range(6))


def test_vocabulary_longer_than_one_prompt(small):
    names = [f"thing number {i} of kind" for i in range(50)]  # 299 word pieces
    caption, _ = build_detection_prompt(names)
    assert len(small.language_backbone.tokenizer.tokenize(caption)) > 256
    (inst,) = _run(small, [{"image": _image(5), "class_names": names}])
    # Five 64-token chunks of 10 names, up to 30 detections each.
    assert len(small.prompts.jobs(0, {"class_names": names})) == 5
    assert len(inst) > 30
    assert 0 <= int(inst.pred_classes.min()) and int(inst.pred_classes.max()) < 50
    assert int(inst.pred_classes.max()) >= 40


def test_input_errors(small):
    with pytest.raises(ValueError, match="empty list of images"):
        small([])
    with pytest.raises(ValueError, match="empty prompt"):
        small([{"image": _image(0), "caption": "  ", "phrase_spans": [[[0, 1]]]}])
    with pytest.raises(ValueError, match="outside the caption"):
        small([{"image": _image(0), "caption": "a cat", "phrase_spans": [[[2, 9]]]}])
    with pytest.raises(ValueError, match="non-empty list"):
        small([{"image": _image(0), "class_names": []}])
    with pytest.raises(ValueError, match="either 'caption'"):
        small([{"image": _image(0)}])
    small.train()
    try:
        with pytest.raises(ValueError, match="needs 'instances'"):
            small([{"image": _image(0), "caption": "a cat", "phrase_spans": [[[2, 5]]]}])
    finally:
        small.eval()


def test_overfit_one_image_two_phrases():
    """GLIP-small (frozen MiniLM, 32-token prompts, plain 3x3 DyConv, no stochastic layers,
    fusion width 128) learns one synthetic 96x96 image with two phrases: AdamW at 1e-3 finds
    both boxes (IoU > 0.5, score > 0.5) after 10 steps with seed 0; checked every 5 steps, at
    most 40."""
    torch.manual_seed(0)
    cfg = _cfg(
        "GLIP-small",
        **{
            "MODEL.LANGUAGE_BACKBONE.FREEZE": True,
            "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 32,
            "MODEL.SWIN.DROP_PATH_RATE": 0.0,
            "MODEL.FPN.DROP_BLOCK": False,
            "MODEL.GLIP.FUSION_DROPOUT": 0.0,
            "MODEL.GLIP.FUSION_EMBED_DIM": 128,
            "MODEL.GLIP.USE_DFCONV": False,
        },
    )
    model = build_model(cfg)
    image = torch.full((3, 96, 96), 128, dtype=torch.uint8)
    image[:, 10:50, 8:44] = torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None]  # red
    image[:, 40:88, 52:90] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]  # blue
    boxes = torch.tensor([[8.0, 10.0, 43.0, 49.0], [52.0, 40.0, 89.0, 87.0]])
    inst = Instances((96, 96), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 1]))
    prompt = {"caption": "red box. blue box", "phrase_spans": [[[0, 7]], [[9, 17]]]}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    found = [False, False]
    for step in range(1, 41):
        model.train()
        losses = model([{"image": image, "instances": inst, **prompt}])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 5:
            continue
        model.eval()
        (out,) = _run(model, [{"image": image, **prompt}])
        for k in range(2):
            sel = out[out.pred_classes == k]
            iou = pairwise_iou_legacy(sel.pred_boxes.tensor, boxes[k : k + 1])[:, 0]
            found[k] = bool(((sel.scores > 0.5) & (iou > 0.5)).any())
        if all(found):
            break
    assert found == [True, True], f"after {step} steps"
