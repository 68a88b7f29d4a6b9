"""Optimizer parameter groups, tuning modes, gradient clipping, EMA math and checkpointing."""

from contextlib import nullcontext

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from torch import nn

from glip_d2.config import add_glip_config
from glip_d2.engine import (
    GLIPAMPTrainer,
    GLIPSimpleTrainer,
    ModelEMA,
    apply_tuning_mode,
    build_glip_optimizer,
)


class ToyLanguage(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.5))
        self.tunable_linear = nn.Linear(4, 4, bias=False)


class ToyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Dropout(0.5))
        self.bbox_pred = nn.Conv2d(4, 4, 1)
        self.centerness = nn.Conv2d(4, 1, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))


class ToyGLIP(nn.Module):
    """Module names as in glip_d2 (backbone / language_backbone / head)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.language_backbone = ToyLanguage()
        self.head = ToyHead()

    def forward(self, x):
        feat = self.head.tower(self.backbone(x))
        return self.head.bbox_pred(feat).mean() + self.head.centerness(feat).mean()


def _cfg(**solver):
    cfg = add_glip_config(get_cfg())
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.GLIP.LANG_LR = 1e-5
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    for key, value in solver.items():
        cfg.merge_from_list([key, value])
    return cfg


def _hyper_of(optimizer, model):
    out = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[names[id(p)]] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups_lang_lr_bias_and_norms():
    model = ToyGLIP()
    opt = build_glip_optimizer(_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    h = _hyper_of(opt, model)
    assert h["backbone.0.weight"] == pytest.approx((1e-4, 0.05))
    assert h["backbone.0.bias"] == pytest.approx((2e-4, 0.0))
    assert h["backbone.1.weight"] == pytest.approx((1e-4, 0.0))  # BatchNorm: no decay
    assert h["head.tower.1.weight"] == pytest.approx((1e-4, 0.0))  # GroupNorm
    assert h["head.tower.1.bias"] == pytest.approx((2e-4, 0.0))
    assert h["head.log_scale"] == pytest.approx((1e-4, 0.05))
    assert h["language_backbone.model.0.weight"] == pytest.approx((1e-5, 0.05))
    assert h["language_backbone.model.0.bias"] == pytest.approx((2e-5, 0.0))
    assert h["language_backbone.model.1.weight"] == pytest.approx((1e-5, 0.0))  # LayerNorm
    assert len(h) == len(list(model.parameters()))


def test_full_model_gradient_clipping_clips_global_norm():
    model = ToyGLIP()
    cfg = _cfg(
        **{
            "SOLVER.CLIP_GRADIENTS.ENABLED": True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
            "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
        }
    )
    opt = build_glip_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    total = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    # every gradient scaled by the same factor: the direction is kept
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grads, grads[0].expand_as(grads))


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="LAMB"):
        build_glip_optimizer(_cfg(**{"SOLVER.OPTIMIZER": "LAMB"}), ToyGLIP())


def test_linear_prob_freezes_all_but_prediction_layers_and_pins_eval():
    model = ToyGLIP()
    trainable = apply_tuning_mode(_cfg(**{"SOLVER.GLIP.TUNING": "linear_prob"}), model)
    assert sorted(trainable) == [
        "head.bbox_pred.bias",
        "head.bbox_pred.weight",
        "head.centerness.bias",
        "head.centerness.weight",
        "head.log_scale",
    ]
    model.train()
    assert not model.backbone.training and not model.head.tower.training
    assert not model.head.tower[2].training  # dropout inside a frozen part stays off
    assert model.head.training and model.head.bbox_pred.training
    opt = build_glip_optimizer(_cfg(), model)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def test_prompt_tuning_trains_only_the_table():
    model = ToyGLIP()
    trainable = apply_tuning_mode(_cfg(**{"SOLVER.GLIP.TUNING": "prompt"}), model)
    assert trainable == ["language_backbone.tunable_linear.weight"]
    model.train()
    assert not model.language_backbone.model.training
    with pytest.raises(ValueError, match="TUNABLE_LINEAR"):
        apply_tuning_mode(_cfg(**{"SOLVER.GLIP.TUNING": "prompt"}), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'bogus'"):
        apply_tuning_mode(_cfg(**{"SOLVER.GLIP.TUNING": "bogus"}), ToyGLIP())


def test_ema_update_math_and_apply_to():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
    ema.update(model)  # 0.9 * [1, 2] + 0.1 * [3, 0]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.2, 1.8]]))
    ema.update(model)  # 0.9 * [1.2, 1.8] + 0.1 * [3, 0]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.38, 1.62]]))
    with ema.apply_to(model):
        assert torch.allclose(model.weight, torch.tensor([[1.38, 1.62]]))
    assert torch.equal(model.weight, torch.tensor([[3.0, 0.0]]))  # restored
    with pytest.raises(ValueError, match="DECAY"):
        ModelEMA(model, decay=1.0)


def test_ema_integer_buffers_are_copied():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5)
    model.num_batches_tracked.fill_(7)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.shadow["num_batches_tracked"].item() == 7
    assert torch.allclose(ema.shadow["weight"], torch.full((2,), 2.0))


def test_ema_checkpoint_round_trip(tmp_path):
    model = ToyGLIP()
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    ckpt = DetectionCheckpointer(model, str(tmp_path), ema=ema)
    ckpt.save("model_0000004", iteration=4)

    other = ToyGLIP()
    ema2 = ModelEMA(other, decay=0.99)
    assert not ema2.loaded_from_checkpoint
    DetectionCheckpointer(other, str(tmp_path), ema=ema2).resume_or_load("", resume=True)
    assert ema2.loaded_from_checkpoint and ema2.num_updates == 1
    for key, value in ema.shadow.items():
        assert torch.equal(ema2.shadow[key], value), key
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_ema_refuses_incomplete_state():
    ema = ModelEMA(ToyGLIP(), decay=0.9)
    with pytest.raises(KeyError, match="lacks"):
        ema.load_state_dict({"shadow": {"head.log_scale": torch.zeros(())}})


class _Loader:
    def __init__(self, values):
        self.values = values

    def __iter__(self):
        return iter(self.values)


class _LossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, scale):
        return {"loss_a": self.w * scale, "loss_b": (self.w * scale) ** 2}


def test_train_loop_skips_nonfinite_steps_and_runs_bf16():
    from detectron2.utils.events import EventStorage

    model = _LossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = GLIPSimpleTrainer(model, _Loader([float("nan"), 1.0]), opt, bf16=True)
    with EventStorage(0) as storage:
        loop.iter = 0
        loop.run_step()  # NaN loss: no update
        assert model.w.item() == 1.0 and loop.skipped_steps == 1
        loop.iter = 1
        loop.run_step()  # d/dw (w + w^2) = 3 at w = 1 -> w = 0.7
        assert model.w.item() == pytest.approx(0.7, abs=1e-2)  # bf16 forward
        assert storage.history("total_loss").latest() == pytest.approx(2.0, abs=1e-2)


def _run_steps(loop, start, stop):
    """Run iterations [start, stop) as TrainerBase.train does (without hooks)."""
    for it in range(start, stop):
        loop.iter = it
        loop.run_step()


def test_train_loop_stops_after_max_skipped_steps_in_a_row():
    """A diverged run fails loudly: at most MAX_SKIPPED_STEPS non-finite steps in a row."""
    from detectron2.utils.events import EventStorage

    nan, big = float("nan"), 1e30  # 1e30: loss_a finite, loss_b = (1e30)^2 = inf
    model = _LossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loop = GLIPSimpleTrainer(
        model, _Loader([nan, big, 1.0, nan, nan, big]), opt, max_skipped_steps=2
    )
    with EventStorage(0) as storage:
        _run_steps(loop, 0, 5)  # 2 skipped, 1 finite (resets the run), 2 skipped
        assert loop.skipped_steps == 4 and loop.guard.consecutive == 2
        assert loop.state_dict()["skipped_steps"] == 4
        with pytest.raises(FloatingPointError) as err:
            _run_steps(loop, 5, 6)
        # a count per step, not a median over the logging window
        assert [v for v, _ in storage.history("skipped_steps").values()] == [1, 2, 2, 3, 4, 5]
        assert storage.latest_with_smoothing_hint(20)["skipped_steps"][0] == 5
    msg = str(err.value)
    assert "3 iterations in a row (3 to 5)" in msg and "MAX_SKIPPED_STEPS=2" in msg
    assert "iteration 5: loss_a=1e+30, loss_b=inf (non-finite: loss_b)" in msg
    # 0: stop at the first non-finite loss (D2's own behaviour)
    loop = GLIPSimpleTrainer(_LossModel(), _Loader([nan]), opt, max_skipped_steps=0)
    with EventStorage(0), pytest.raises(FloatingPointError, match="loss_a=nan, loss_b=nan"):
        _run_steps(loop, 0, 1)
    with pytest.raises(ValueError, match="MAX_SKIPPED_STEPS"):
        GLIPSimpleTrainer(_LossModel(), _Loader([]), opt, max_skipped_steps=-1)


def test_amp_train_loop_skips_and_stops_like_the_simple_one():
    """fp16 AMP (CUDA; without CUDA autocast and the scaler switch themselves off): a NaN loss
    is skipped without touching weights or scaler, at most MAX_SKIPPED_STEPS in a row."""
    from detectron2.utils.events import EventStorage

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _LossModel().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nan = float("nan")
    with pytest.warns(UserWarning) if device == "cpu" else nullcontext():
        loop = GLIPAMPTrainer(model, _Loader([nan, 1.0, nan, nan]), opt, max_skipped_steps=1)
        with EventStorage(0):
            _run_steps(loop, 0, 1)
            assert model.w.item() == 1.0 and loop.skipped_steps == 1
            _run_steps(loop, 1, 2)  # finite: d/dw (w + w^2) = 3 at w = 1 -> w = 0.7
            assert model.w.item() == pytest.approx(0.7, abs=2e-3)
            _run_steps(loop, 2, 3)  # skipped (1 in a row)
            with pytest.raises(FloatingPointError, match="iteration 3"):
                _run_steps(loop, 3, 4)
    state = loop.state_dict()
    assert state["skipped_steps"] == 3 and "grad_scaler" in state
    assert model.w.item() == pytest.approx(0.7, abs=2e-3)
