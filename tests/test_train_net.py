"""train_net.py end to end on the instant-test config: train, checkpoint, resume, evaluate,
and a 2-process CPU run through D2's ``launch`` against a 1-process run."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase

from datasets.prepare_glip_synth import ensure_glip_synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_train_net():
    """train_net.py is a script at the repository root, not a module of the package."""
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()

CONFIG = os.path.join(REPO, "configs", "quick_schedules", "glip_small_instant_test.yaml")


@pytest.fixture(scope="module", autouse=True)
def synth_data():
    # The registered glip_synth_* names point at $DETECTRON2_DATASETS/glip_synth.
    return ensure_glip_synth()


def _args(out_dir, *opts, resume=False, eval_only=False):
    argv = ["--config-file", CONFIG, "OUTPUT_DIR", str(out_dir), *opts]
    if resume:
        argv.insert(0, "--resume")
    if eval_only:
        argv.insert(0, "--eval-only")
    return train_net.parse_args(argv)


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["iteration"]: r for r in rows if "total_loss" in r}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """4 iterations with EMA, checkpoint every 2, no evaluation."""
    out = tmp_path_factory.mktemp("train")
    train_net.main(_args(out, "SOLVER.EMA.ENABLED", "True", "DATASETS.TEST", "()"))
    return out


def test_training_writes_checkpoints_and_metrics(trained_run):
    files = sorted(os.listdir(trained_run))
    assert "model_0000001.pth" in files and "model_final.pth" in files
    with open(trained_run / "last_checkpoint") as f:
        assert f.read().strip() == "model_final.pth"
    metrics = _metrics(trained_run)
    assert sorted(metrics) == [0, 1, 2, 3]
    for row in metrics.values():
        assert row["total_loss"] > 0 and "loss_reg" in row
    final = torch.load(trained_run / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    assert final["ema"]["num_updates"] == 4
    # EMA (decay 0.999) stays close to the initial weights, unlike the trained model.
    key = "head.bbox_pred.weight"
    assert not torch.equal(final["ema"]["shadow"][key], final["model"][key])


def test_eval_only_uses_checkpoint_and_reports_box_ap(trained_run):
    results = train_net.main(
        _args(
            trained_run,
            "MODEL.WEIGHTS",
            str(trained_run / "model_final.pth"),
            "SOLVER.EMA.ENABLED",
            "True",
            "DATASETS.TEST",
            "('glip_synth_val',)",
            # after 4 iterations the scores are still near the 0.01 prior
            "MODEL.GLIP.INFERENCE_TH",
            "0.0",
            eval_only=True,
        )  # fmt: skip
    )
    bbox = results["bbox"]
    assert set(bbox) >= {"AP", "AP50", "AP75"}
    assert 0.0 <= bbox["AP50"] <= 100.0
    assert os.path.isfile(trained_run / "inference/glip_synth_val/coco_instances_results.json")


class _Interrupt(HookBase):
    """Simulate a crash after the step of iteration ``at`` (before any later checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt(f"interrupted at iteration {self.at}")


def test_resume_continues_at_saved_iteration_with_optimizer_state(tmp_path):
    args = _args(tmp_path, "SOLVER.EMA.ENABLED", "True", "DATASETS.TEST", "()")
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_Interrupt(at=2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    del trainer
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    assert saved["iteration"] == 1

    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert (
        resumed.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 2
    )
    assert resumed.ema.num_updates == 2 and resumed.ema.loaded_from_checkpoint
    opt_now = resumed.optimizer.state_dict()
    opt_saved = saved["trainer"]["_trainer"]["optimizer"]
    assert opt_now["param_groups"] == opt_saved["param_groups"]
    assert len(opt_now["state"]) == len(opt_saved["state"]) > 0
    for idx, state in opt_saved["state"].items():
        assert float(opt_now["state"][idx]["step"]) == float(state["step"]) == 2.0
        assert torch.equal(opt_now["state"][idx]["exp_avg"], state["exp_avg"])
        assert torch.equal(opt_now["state"][idx]["exp_avg_sq"], state["exp_avg_sq"])
    resumed.train()
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    steps = {float(s["step"]) for s in final["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert steps == {4.0}
    assert final["ema"]["num_updates"] == 4


class _Poison(HookBase):
    """Simulate a diverged step: after iteration ``at`` a weight of the model is NaN."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                self.trainer.model.head.bbox_pred.weight[0, 0] = float("nan")


def test_diverged_training_stops_without_writing_a_nan_checkpoint(tmp_path):
    """Once the weights are NaN every loss is NaN: the steps are skipped and counted, and the
    next checkpoint is refused instead of written (the run used to finish with a NaN
    model_final.pth, exit code 0)."""
    from glip_d2.checkpoint import NonFiniteCheckpointError

    args = _args(
        tmp_path,
        "SOLVER.EMA.ENABLED", "True",
        "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.STEPS", "(2,)",
        "SOLVER.CHECKPOINT_PERIOD", "1",
    )  # fmt: skip
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_Poison(at=0)])  # after the checkpointer: model_0000000 is finite
    with pytest.raises(NonFiniteCheckpointError, match="model/head.bbox_pred.weight") as err:
        trainer.train()
    assert "model_0000000.pth" in str(err.value)  # the last finite checkpoint is named
    assert trainer.iter == 1
    files = set(os.listdir(tmp_path))
    assert "model_0000000.pth" in files
    assert "model_0000001.pth" not in files and "model_final.pth" not in files
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read().strip() == "model_0000000.pth"
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert [(r["iteration"], r["skipped_steps"]) for r in rows] == [(0, 0), (1, 1)]


def _run_train_net(out_dir, num_procs):
    """train_net.py as a user runs it; deterministic data so 1 and 2 processes see the same
    images per step (D2's sampler deals the global batch round-robin to the ranks)."""
    cmd = [
        sys.executable, os.path.join(REPO, "train_net.py"),
        "--num-gpus", str(num_procs), "--dist-url", "auto",
        "--config-file", CONFIG,
        "OUTPUT_DIR", str(out_dir),
        "SOLVER.MAX_ITER", "3",
        "SOLVER.STEPS", "(2,)",
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "DATASETS.TEST", "()",
        "INPUT.GLIP.FLIP_PROB", "0.0",
        "DATASETS.GLIP.SHUFFLE_PROMPT", "False",
        "DATASETS.GLIP.NUM_NEGATIVES", "0",
        # Dropout (text encoder, head BERT layers) is on and draws its masks over (B, L, D).
        # With the text padded to MAX_QUERY_LEN, L does not depend on the other image of the
        # batch, so image 0 gets the same masks in both runs (same seed), as the tolerance
        # below assumes; with unpadded text the runs' L differ and so do all masks.
        "MODEL.LANGUAGE_BACKBONE.PAD_TO_MAX", "True",
    ]  # fmt: skip
    # One thread per process: the two workers share the machine's cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _metrics(out_dir)


def test_two_process_cpu_run_matches_one_process(tmp_path):
    one = _run_train_net(tmp_path / "one", 1)
    two = _run_train_net(tmp_path / "two", 2)
    assert sorted(one) == sorted(two) == [0, 1, 2]
    assert one[2]["total_loss"] != one[0]["total_loss"]  # the steps did update the model
    for it in one:
        for key in ("loss_dot_product_token", "loss_reg", "loss_centerness"):
            assert two[it][key] == pytest.approx(one[it][key], rel=2e-3, abs=1e-5), (it, key)
    # the log of the 2-process run says GLOO: D2's launch picks it when no CUDA is visible
    with open(tmp_path / "two" / "log.txt") as f:
        assert "World size: 2" in f.read()
