"""demo/main_job.py --layout: both head layouts' recipes build and train one step (tiny
images and batch so that each takes a few seconds)."""

import importlib.util

import pytest
import torch
from conftest import REPO_ROOT
from detectron2.utils.events import EventStorage

from datasets.prepare_glip_synth import ensure_glip_synth


def _load_main_job():
    """demo/main_job.py is a script, not a module of the package."""
    spec = importlib.util.spec_from_file_location("main_job", REPO_ROOT / "demo" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main_job = _load_main_job()


@pytest.fixture(scope="module", autouse=True)
def synth_data():
    return ensure_glip_synth()  # the registered glip_synth_* sets


def _cfg(layout, tmp_path, *opts):
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    args = main_job.parse_args(["--layout", layout, "--output-dir", str(tmp_path), *opts])
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return cfg


def test_layout_selects_its_config(tmp_path):
    assert main_job.parse_args(["--layout", "fused"]).config_file.endswith(
        "glip_small_synth_fused.yaml"
    )
    default = main_job.parse_args([])
    assert default.layout == main_job.DEFAULT_LAYOUT
    assert default.config_file == str(main_job.LAYOUT_CONFIGS[main_job.DEFAULT_LAYOUT])
    assert default.output_dir.endswith("output/main_job")
    other = next(k for k in main_job.LAYOUT_CONFIGS if k != main_job.DEFAULT_LAYOUT)
    assert main_job.parse_args(["--layout", other]).output_dir.endswith(f"main_job_{other}")
    with pytest.raises(SystemExit):
        main_job.parse_args(["--layout", "B"])
    fused, a = _cfg("fused", tmp_path), _cfg("A", tmp_path)
    assert fused.MODEL.GLIP.EARLY_FUSE and fused.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT
    assert not a.MODEL.GLIP.EARLY_FUSE and not a.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT
    # Both are GLIP-small (configs/GLIP-small.yaml) trained on glip_synth.
    for cfg in (fused, a):
        assert (cfg.MODEL.SWIN.EMBED_DIM, cfg.MODEL.GLIP.NUM_LAYERS) == (48, 2)
        assert cfg.DATASETS.TRAIN == ("glip_synth_train",)


@pytest.mark.parametrize("layout", ["A", "fused"])
def test_layout_builds_and_trains_one_step(layout, tmp_path):
    from glip_d2.engine import GLIPTrainer, build_glip_optimizer, build_train_loop

    tiny = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    cfg = _cfg(layout, tmp_path, *tiny)
    torch.manual_seed(0)
    model = GLIPTrainer.build_model(cfg)
    fused = [hasattr(layer, "fusion") for layer in model.head.tower]
    assert fused == [layout == "fused"] * cfg.MODEL.GLIP.NUM_LAYERS
    assert hasattr(model.head.tower[-1], "text_layer") == (layout == "fused")
    optimizer = build_glip_optimizer(cfg, model)
    loop = build_train_loop(cfg, model, GLIPTrainer.build_train_loader(cfg), optimizer)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage(0) as storage:
        loop.iter = 0
        loop.run_step()
        losses = {k: v.latest() for k, v in storage.histories().items() if "loss" in k}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    moved = [n for n, p in model.named_parameters() if n in trained and (p != trained[n]).any()]
    assert any(n.startswith("head.tower.0.dyconv") for n in moved)
    if layout == "fused":
        assert any(".fusion." in n for n in moved) and any(".text_layer." in n for n in moved)


def test_phrase_scores_on_objects():
    """Per object, each phrase's best score among the boxes overlapping it (IoU >= 0.5)."""
    from detectron2.structures import Boxes, Instances

    inst = Instances((256, 256))
    inst.pred_boxes = Boxes(
        torch.tensor(
            [
                [77, 3, 150, 71],  # on the large star: "blue star" 0.43 and 0.2, "red circle" 0.1
                [80, 5, 150, 71],
                [77, 3, 150, 71],
                [159, 156, 198, 194],  # on the small star: "blue star" 0.58
                [0, 0, 20, 20],  # on neither: "green square" 0.9
            ],
            dtype=torch.float32,
        )
    )
    inst.scores = torch.tensor([0.43, 0.2, 0.1, 0.58, 0.9])
    inst.pred_classes = torch.tensor([0, 0, 1, 0, 2])
    names, boxes = main_job._heldout_objects("000000.jpg")
    assert names == ["blue star", "yellow star"]
    assert boxes.tolist() == [[159, 156, 198, 194], [77, 3, 150, 71]]
    scores = main_job.phrase_scores_on_objects(inst, boxes)
    assert scores == [
        {"blue star": 0.58, "red circle": 0.0, "green square": 0.0},
        {"blue star": 0.43, "red circle": 0.1, "green square": 0.0},
    ]
