"""X-VLM objectives (glip_d2/modeling/xvlm/): ITC on hand-made embeddings, gathering across two
gloo processes, hard-negative sampling, MLM masking, texts, pooling, the parameter set with the
objectives off and on, and the losses of a tiny model in both head layouts."""

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

from glip_d2.modeling.xvlm import (
    gather_with_grad,
    image_text,
    is_label_list,
    itc_loss,
    mask_tokens,
    phrase_text,
    sample_hard_negatives,
    text_key,
)
from glip_d2.modeling.xvlm.mlm import MLMHead, pretrained_mlm_head_state
from glip_d2.modeling.xvlm.pooling import BoxPooler, pool_pyramid, valid_location_masks

REPO_ROOT = Path(__file__).resolve().parents[1]
XVLM_KEYS = ("ITC_WEIGHT", "ITC_BOX_WEIGHT", "ITM_WEIGHT", "MLM_WEIGHT")

# ---------------------------------------------------------------------------------------- ITC


def _ce(logits, target):
    """-log softmax(logits)[target] computed by hand."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_itc_loss_known_value():
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    keys = torch.tensor([1, 2])
    # logits / 0.5: i2t [[1.6, 0], [1.92, 1.6]], t2i [[1.6, 1.92], [0, 1.6]]
    i2t = _ce([1.6, 0.0], 0) + _ce([1.92, 1.6], 1)
    t2i = _ce([1.6, 1.92], 0) + _ce([0.0, 1.6], 1)
    expected = (i2t + t2i) / 2 / 2
    assert itc_loss(v, t, keys, torch.tensor(0.5)).item() == pytest.approx(expected, rel=1e-6)
    # Equal keys (a duplicated caption): each row's target is split over both columns.
    dup = 0.5 * (_ce([1.6, 0.0], 0) + _ce([1.6, 0.0], 1))
    dup += 0.5 * (_ce([1.92, 1.6], 0) + _ce([1.92, 1.6], 1))
    dup += 0.5 * (_ce([1.6, 1.92], 0) + _ce([1.6, 1.92], 1))
    dup += 0.5 * (_ce([0.0, 1.6], 0) + _ce([0.0, 1.6], 1))
    got = itc_loss(v, t, torch.tensor([7, 7]), torch.tensor(0.5)).item()
    assert got == pytest.approx(dup / 2 / 2, rel=1e-6)


def test_itc_gradient_pulls_pairs_together():
    # Orthogonal pairs: image i and text i coincide, the other pair is orthogonal.
    v = torch.eye(2, 3, requires_grad=True)
    t = torch.eye(2, 3, requires_grad=True)
    temperature = torch.tensor(0.5, requires_grad=True)
    itc_loss(v, t, torch.tensor([1, 2]), temperature).backward()
    # Moving an embedding towards its own pair lowers the loss, towards the other raises it.
    assert (v.grad[0] @ t[0]).item() < 0 < (v.grad[0] @ t[1]).item()
    assert (t.grad[1] @ v[1]).item() < 0 < (t.grad[1] @ v[0]).item()
    # The positives are the most similar pairs: a lower temperature sharpens towards them.
    assert temperature.grad.item() > 0


def test_itc_without_pairs_is_zero_and_connected():
    proj = torch.nn.Linear(3, 2)
    v = F.normalize(proj(torch.zeros(0, 3)), dim=-1)
    loss = itc_loss(v, v, torch.zeros(0, dtype=torch.long), torch.tensor(0.1))
    assert loss.item() == 0.0
    loss.backward()
    assert proj.weight.grad is not None


# 5 pairs split 3 + 2 over two processes; keys 0 and 3 repeat (duplicated captions).
_FEATURES = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
_TEXTS = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
_KEYS = torch.tensor([0, 1, 0, 3, 3])


def _projected_loss(rows):
    """ITC of the given rows through two shared projections and a learnable temperature."""
    torch.manual_seed(5)
    vp, tp = torch.nn.Linear(4, 3), torch.nn.Linear(6, 3)
    temp = torch.nn.Parameter(torch.tensor(0.2))
    v = F.normalize(vp(_FEATURES[rows]), dim=-1)
    t = F.normalize(tp(_TEXTS[rows]), dim=-1)
    loss = itc_loss(v, t, _KEYS[rows], temp)
    loss.backward()
    return loss, [vp.weight, vp.bias, tp.weight, tp.bias, temp]


def _gather_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = [0, 1, 2] if rank == 0 else [3, 4]
        loss, params = _projected_loss(rows)
        grads = []
        for p in params:  # what DDP does: the mean of the processes' gradients
            g = p.grad.clone()
            dist.all_reduce(g)
            grads.append(g / 2)
        (gathered,), start = gather_with_grad(torch.tensor(rows))
        results[rank] = {"loss": loss.item(), "grads": grads, "rows": gathered, "start": start}
    finally:
        dist.destroy_process_group()


def test_gathering_over_two_gloo_processes_equals_one_process():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(port, results), nprocs=2, join=True)
    loss, params = _projected_loss([0, 1, 2, 3, 4])
    assert (results[0]["loss"] + results[1]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-5)
    for rank in (0, 1):
        for got, p in zip(results[rank]["grads"], params, strict=True):
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-7)
        assert results[rank]["rows"].tolist() == [0, 1, 2, 3, 4]
    assert (results[0]["start"], results[1]["start"]) == (0, 3)


# ------------------------------------------------------------------------ ITM hard negatives


def test_hard_negatives_never_pick_a_positive():
    g = torch.Generator().manual_seed(0)
    keys = torch.tensor([5, 6, 5, 7, 8, 8])
    # The positives (own key) score highest by far: they must still never be drawn.
    similarity = torch.randn(6, 6, generator=g)
    similarity[keys[:, None] == keys[None, :]] = 50.0
    for _ in range(200):
        drawn = sample_hard_negatives(similarity, keys, keys, generator=g)
        assert (drawn >= 0).all()
        assert (keys[drawn] != keys).all()
    # Hard: among the allowed columns the most similar one dominates the draws.
    similarity = torch.zeros(1, 4)
    similarity[0, 2] = 6.0
    counts = torch.bincount(
        torch.cat(
            [
                sample_hard_negatives(similarity, keys[:1], torch.tensor([5, 1, 2, 3]), g)
                for _ in range(300)
            ]
        ),
        minlength=4,
    )
    assert counts[0] == 0 and counts[2] > 250
    # A row whose every column shares its key has no negative.
    same = sample_hard_negatives(torch.zeros(2, 2), torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert same.tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------- MLM


@pytest.fixture(scope="module")
def tokenizer():
    from glip_d2.text import load_tokenizer

    return load_tokenizer("bundled-minilm")


def test_mlm_masks_only_real_tokens(tokenizer):
    texts = ["red circle", "a large blue star left of a small green square and a red triangle"]
    enc = tokenizer(texts, padding="max_length", max_length=32, return_tensors="pt")
    ids, attention = enc["input_ids"], enc["attention_mask"]
    special = set(tokenizer.all_special_ids)
    real = attention.bool() & ~torch.isin(ids, torch.tensor(sorted(special)))
    g = torch.Generator().manual_seed(0)
    masked_kinds = {"mask": 0, "random": 0, "kept": 0}
    for _ in range(300):
        masked, labels = mask_tokens(
            ids,
            attention,
            mask_token_id=tokenizer.mask_token_id,
            special_ids=special,
            vocab_size=tokenizer.vocab_size,
            generator=g,
        )
        chosen = labels != -100
        assert not (chosen & ~real).any()  # never padding, [CLS], [SEP]
        assert torch.equal(masked[~chosen], ids[~chosen])
        assert torch.equal(labels[chosen], ids[chosen])
        # round(0.15 * n), at least one: 2 real tokens -> 1, 14 -> 2
        assert chosen.sum(1).tolist() == [1, round(0.15 * real[1].sum().item())]
        assert not torch.isin(masked[chosen], torch.tensor(sorted(special - {103}))).any()
        for m, o in zip(masked[chosen].tolist(), ids[chosen].tolist(), strict=True):
            kind = "mask" if m == tokenizer.mask_token_id else "kept" if m == o else "random"
            masked_kinds[kind] += 1
    total = sum(masked_kinds.values())  # 900 masked positions: 80 / 10 / 10 %
    assert 0.75 < masked_kinds["mask"] / total < 0.85
    assert 0.06 < masked_kinds["random"] / total < 0.14
    assert 0.06 < masked_kinds["kept"] / total < 0.14


def test_mlm_head_reuses_bert_prediction_head(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    torch.manual_seed(0)
    bert = BertForMaskedLM(config)
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()
    bert.save_pretrained(tmp_path)
    state = pretrained_mlm_head_state(str(tmp_path))
    assert set(state) == {
        "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
        "transform.LayerNorm.bias", "bias",
    }  # fmt: skip
    head = MLMHead(config, state).eval()
    hidden = torch.randn(3, 8)
    embeddings = bert.get_input_embeddings().weight
    torch.testing.assert_close(head(hidden, embeddings), bert.eval().cls(hidden))
    # The bundled MiniLM has no MLM head: a fresh one.
    assert pretrained_mlm_head_state("bundled-minilm") is None
    assert pretrained_mlm_head_state("bundled-minilm", weights_from_checkpoint=True) is None


# -------------------------------------------------------------------------------------- texts


def test_image_and_phrase_texts():
    prompt = "red circle. blue star. green square"
    spans = [[[0, 10]], [[12, 21]], [[23, 35]]]
    assert is_label_list(prompt, spans)
    # Boxed phrases only, deduplicated and sorted: the same objects give the same text.
    assert image_text(prompt, spans, [2, 0, 0]) == "green square. red circle"
    assert image_text(prompt, spans, []) is None
    caption = "a red circle left of a blue star"
    cap_spans = [[[2, 12]], [[21, 32]]]
    assert not is_label_list(caption, cap_spans)
    assert image_text(caption, cap_spans, [1]) == caption
    assert phrase_text("a big red circle", [[2, 5], [10, 16]]) == "big circle"
    # A prompt with a prefix (prompt overrides) is not a bare label list.
    assert not is_label_list("a photo of cat. dog", [[[11, 14]], [[16, 19]]])
    # Keys compare across processes: fixed values, not Python's salted hash.
    assert text_key("red circle") == text_key("red circle") != text_key("red circle.")
    assert text_key("red circle") == 2946446551055536404


# ------------------------------------------------------------------------------------ pooling


def test_pooling_excludes_padding_and_picks_fpn_levels():
    strides = [8, 16, 32, 64, 128]
    # Level l holds the constant l + 3 (P3 = 3, ...); image 1 is 64x32 inside a 64x64 pad,
    # whose padding holds 100 on P3.
    features = [torch.full((2, 2, 64 // s if s < 64 else 1, 64 // s if s < 64 else 1), l + 3.0)
                for l, s in enumerate(strides)]  # fmt: skip
    features[0][1, :, :, 4:] = 100.0
    masks = valid_location_masks(features, [(64, 64), (64, 32)], strides)
    assert masks[0][1].sum().item() == 8 * 4 and masks[0][0].all()
    pooled = pool_pyramid(features, masks)
    torch.testing.assert_close(pooled, torch.full((2, 2), 5.0))  # mean of 3..7, no 100
    pooler = BoxPooler(strides)
    big = [torch.full((1, 2, 2 ** (7 - l), 2 ** (7 - l)), l + 3.0) for l in range(5)]
    # FPN's rule: floor(4 + log2(sqrt(area) / 224)): 32 px -> P3 (clamped), 224 -> P4, 448 -> P5
    boxes = [torch.tensor([[0.0, 0.0, 31.0, 31.0], [0.0, 0.0, 223.0, 223.0], [0, 0, 447.0, 447.0]])]
    assert pooler(big, boxes)[:, 0].tolist() == pytest.approx([3.0, 4.0, 5.0])


# ------------------------------------------------------------------- the model, off and on


def _cfg(**xvlm):
    from conftest import reference_cfg

    cfg = reference_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 32
    for key, value in xvlm.items():
        cfg.MODEL.GLIP.XVLM[key] = value
    return cfg


def test_objectives_off_keep_the_official_parameter_set(tmp_path):
    from _official_keys import SMALL, official_shapes, random_state_dict
    from detectron2.modeling import build_model
    from test_checkpoint import meta_state_dict

    from glip_d2.checkpoint import GLIPCheckpointer, convert_official_state_dict

    official, _ = convert_official_state_dict(meta_state_dict(official_shapes(**SMALL)))
    off = build_model(_cfg()).state_dict()
    assert set(off) == set(official)
    model = build_model(_cfg(**{k: 1.0 for k in XVLM_KEYS}))
    on = model.state_dict()
    assert set(off) < set(on) and all(k.startswith("xvlm.") for k in set(on) - set(off))
    # An official GLIP file still loads into a model with the objectives on (new heads start
    # from their initialisation).
    before = on["xvlm.temp"].clone()
    sd = random_state_dict(official_shapes(**SMALL), seed=3)
    path = tmp_path / "official.pth"
    torch.save({"model": sd}, path)
    GLIPCheckpointer(model).load(str(path))
    assert torch.equal(model.state_dict()["xvlm.temp"], before)
    # ... and a checkpoint trained with them loads into a detector without them (the heads
    # take no part in detection).
    torch.save({"model": model.state_dict()}, tmp_path / "xvlm.pth")
    plain = build_model(_cfg())
    GLIPCheckpointer(plain).load(str(tmp_path / "xvlm.pth"))
    assert torch.equal(plain.head.bias_lang, model.head.bias_lang)


def test_every_glip_config_keeps_the_objectives_off():
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    configs = REPO_ROOT / "configs"
    files = [p for p in configs.rglob("*.yaml") if "xvlm" not in p.relative_to(configs).parts]
    assert len(files) > 8
    for path in files:
        cfg = add_glip_config(get_cfg())
        cfg.merge_from_file(str(path))
        assert all(cfg.MODEL.GLIP.XVLM[k] == 0 for k in XVLM_KEYS), path
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "xvlm" / "glip_small_synth_xvlm.yaml"))
    assert all(cfg.MODEL.GLIP.XVLM[k] > 0 for k in XVLM_KEYS)
    with pytest.raises(ValueError, match="ITM_WEIGHT > 0 needs MODEL.GLIP.XVLM.ITC_WEIGHT"):
        from detectron2.modeling import build_model

        build_model(_cfg(ITM_WEIGHT=1.0))


def _batch():
    def image(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)

    def instances(boxes, classes):
        return Instances(
            (64, 96), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes)
        )

    return [
        {
            "image": image(0),
            "caption": "red circle. blue star. green square",
            "phrase_spans": [[[0, 10]], [[12, 21]], [[23, 35]]],
            "instances": instances([[4.0, 4.0, 30.0, 40.0], [40.0, 10.0, 90.0, 60.0]], [0, 2]),
        },
        {
            "image": image(1),
            "caption": "a large red circle left of a star",
            "phrase_spans": [[[0, 18]], [[27, 33]]],
            "instances": instances([[2.0, 2.0, 40.0, 40.0], [50.0, 5.0, 80.0, 50.0]], [0, 1]),
        },
        {
            "image": image(2),
            "class_names": ["green square", "red circle"],
            "instances": instances([[10.0, 10.0, 60.0, 60.0], [60.0, 4.0, 90.0, 30.0]], [1, 0]),
        },
    ]


@pytest.mark.parametrize("deep_fusion", [False, True], ids=["GLIP-T_A", "deep_fusion"])
def test_losses_of_a_tiny_model(deep_fusion):
    from detectron2.modeling import build_model

    cfg = _cfg(**{k: 1.0 for k in XVLM_KEYS})
    cfg.MODEL.GLIP.EARLY_FUSE = deep_fusion
    cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = deep_fusion
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert hasattr(model.xvlm, "fusion") != deep_fusion  # deep fusion: the head's tower fuses
    losses = model(_batch())
    assert {"loss_itc", "loss_itc_box", "loss_itm", "loss_mlm"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # 3 image texts ("green square. red circle" twice: duplicates), 6 boxes of 4 phrases.
    assert 0 < losses["loss_itc"].item() < math.log(3) + 1
    assert losses["loss_mlm"].item() == pytest.approx(math.log(30522), abs=1.5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.xvlm.parameters())
    assert model.backbone.bottom_up.patch_embed.proj.weight.grad.abs().sum() > 0
