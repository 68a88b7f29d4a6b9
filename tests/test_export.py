"""ONNX export (glip_d2/export): ``python -m glip_d2.export`` on the small test config with
random weights; the exported runtime in a fresh process that imports neither torch nor glip_d2
gives GLIPPredictor's detections; its resize, prompts and NMS equal glip_d2's; bad input to the
command and the runtime gets clear errors."""

import ast
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from detectron2.config import get_cfg
from detectron2.data.transforms import ResizeTransform
from detectron2.modeling import build_model
from PIL import Image

from glip_d2 import add_glip_config
from glip_d2.data.transforms import glip_resize_shape as glip_d2_resize_shape
from glip_d2.export import GLIPExportModule, check_onnx
from glip_d2.export.__main__ import main as export_main
from glip_d2.export.graph import exportable_ops
from glip_d2.export.runtime import GLIPRuntime, PromptEncoder, nms_legacy, resize_image
from glip_d2.export.runtime.images import glip_resize_shape
from glip_d2.predictor import GLIPPredictor
from glip_d2.structures import nms_legacy as glip_d2_nms
from glip_d2.text import PromptJobBuilder
from glip_d2.text.tokenizer import load_tokenizer

pytest.importorskip("onnxruntime")

CONFIG = REPO_ROOT / "configs" / "quick_schedules" / "glip_small_instant_test.yaml"
# Deformable convs on; the threshold near the median phrase score of the random model (about
# half the candidates pass), top-k and the cap small enough to cut.
OVERRIDES = [
    "MODEL.GLIP.USE_DFCONV", "True", "MODEL.GLIP.INFERENCE_TH", "0.01",
    "MODEL.GLIP.PRE_NMS_TOP_N", "50", "TEST.DETECTIONS_PER_IMAGE", "40",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
]  # fmt: skip
NAMES = ["red circle", "blue star", "green triangle"]
CAPTION = {
    "caption": "a purple square left of a yellow star",
    "phrase_spans": [[[2, 15]], [[25, 36]]],
}
# 30 names need two prompts of MAX_QUERY_LEN 64 tokens.
LONG_VOCABULARY = [f"{c} {s}" for c in ("red", "green", "blue", "yellow", "purple", "grey")
                   for s in ("circle", "square", "star", "triangle", "ring")]  # fmt: skip


def _cfg(weights=""):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(OVERRIDES + ["MODEL.WEIGHTS", str(weights)])
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(_cfg())
    path = tmp_path_factory.mktemp("export_weights") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def export_dir(weights, tmp_path_factory):
    """The export command, run as a user runs it."""
    out = tmp_path_factory.mktemp("export") / "glip_small"
    cmd = [sys.executable, "-m", "glip_d2.export", "--config-file", str(CONFIG),
           "--output", str(out), *OVERRIDES, "MODEL.WEIGHTS", str(weights)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "onnxruntime vs PyTorch at a second size" in proc.stderr
    return out


@pytest.fixture(scope="module")
def runtime(export_dir):
    return GLIPRuntime(str(export_dir))


@pytest.fixture(scope="module")
def predictor(weights):
    return GLIPPredictor(_cfg(weights))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A glip_synth image (uint8, 256 x 256) and a float image of another shape (its resize
    takes the float path and gives another padded size)."""
    from datasets.prepare_glip_synth import ensure_glip_synth

    root = ensure_glip_synth(
        str(tmp_path_factory.mktemp("export_synth") / "glip_synth"),
        {"train": 1, "val": 1, "test_heldout": 2},
    )
    folder = os.path.join(root, "images", "test_heldout")
    first, second = (cv2.imread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))[:2])
    return [first, np.ascontiguousarray(second[20:200, :]).astype(np.float32)]


def test_export_folder(export_dir):
    files = {p.name for p in export_dir.iterdir()}
    assert {"model.onnx", "glip_export.json", "tokenizer", "glip_runtime", "config.yaml"} <= files
    info = json.loads((export_dir / "glip_export.json").read_text())
    assert info["size_divisibility"] == 32 and info["max_query_len"] == 64
    assert (info["min_size_test"], info["max_size_test"]) == (96, 160)
    assert info["score_threshold"] == 0.01 and info["pre_nms_top_n"] == 50
    assert info["detections_per_prompt"] == 40 and info["nms_threshold"] == 0.6
    assert info["default_class_names"][:2] == ["red circle", "red square"]  # glip_synth_val
    assert all(v < 1e-3 for v in info["check"].values())


RUNTIME_SCRIPT = """
import json, sys
import numpy as np
from glip_runtime import GLIPRuntime

runtime = GLIPRuntime(sys.argv[1])
images = np.load(sys.argv[2])
results = []
for case in json.load(open(sys.argv[3])):
    out = runtime(images[case["image"]], case["prompt"])
    results.append({k: np.asarray(out[k]).tolist() for k in ("boxes", "scores", "labels")})
    results[-1]["phrases"] = out["phrases"]
    results[-1]["dtypes"] = [str(out[k].dtype) for k in ("boxes", "scores", "labels")]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "glip_d2"))
json.dump({"results": results, "loaded": loaded}, open(sys.argv[4], "w"))
"""


def _assert_same_detections(actual, expected, where):
    """Each expected detection has one actual one with its label, score and box (1e-4)."""
    boxes, scores, labels = (np.asarray(actual[k]) for k in ("boxes", "scores", "labels"))
    assert len(scores) == len(expected["scores"]), where
    unused = np.ones(len(scores), bool)
    for box, score, label in zip(
        expected["boxes"], expected["scores"], expected["labels"], strict=True
    ):
        close = (
            unused
            & (labels == label)
            & (np.abs(scores - score) <= 1e-4)
            & (np.abs(boxes - box).max(axis=1, initial=0) <= 1e-4)
        )
        assert close.any(), f"{where}: no match for {label} {score} {box}"
        unused[np.argmax(close)] = False


def test_runtime_in_a_fresh_process_gives_the_predictors_detections(
    export_dir, predictor, images, tmp_path
):
    cases = [{"image": f"image{i}", "prompt": p} for i in (0, 1) for p in (NAMES, CAPTION)]
    cases.append({"image": "image0", "prompt": LONG_VOCABULARY})
    np.savez(tmp_path / "images.npz", image0=images[0], image1=images[1])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    args = [export_dir, tmp_path / "images.npz", tmp_path / "cases.json", tmp_path / "out.json"]
    env = dict(os.environ, PYTHONPATH=str(export_dir), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_SCRIPT, *map(str, args)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["loaded"] == []  # neither torch nor any part of glip_d2
    sizes = [predictor.aug.get_transform(im).apply_image(im).shape[:2] for im in images]
    assert sizes == [(96, 96), (96, 136)]  # padded to 96 x 96 and 96 x 160: one graph
    counts = []
    for case, actual in zip(cases, out["results"], strict=True):
        image = images[int(case["image"][-1])]
        expected = predictor(image, case["prompt"])
        inst = expected["instances"]
        reference = {
            "boxes": inst.pred_boxes.tensor.numpy(),
            "scores": inst.scores.numpy(),
            "labels": inst.pred_classes.numpy(),
        }
        assert actual["phrases"] == expected["phrases"]
        assert actual["dtypes"] == ["float32", "float32", "int64"]
        _assert_same_detections(actual, reference, f"{case['image']} {case['prompt']}")
        counts.append(len(actual["scores"]))
    assert min(counts) > 0 and max(counts) <= 40 * 2  # the cap applies per prompt (2 chunks)
    labels = out["results"][-1]["labels"]  # names 0-20 in the first prompt, 21-29 in the second
    assert min(labels) <= 20 < max(labels)


def test_graph_at_sizes_the_trace_did_not_see(predictor, export_dir):
    # 224 x 64: every Swin stage of the height a multiple of the window (no padding), unlike
    # the traced size; a prompt with padding after its tokens.
    model = predictor.model
    with exportable_ops(model):
        diffs = check_onnx(
            GLIPExportModule(model), export_dir / "model.onnx", (224, 64), ["a b c d e f", "x y"], 1
        )
    assert diffs["level_sizes"] == 0 and max(diffs.values()) < 1e-3


@pytest.mark.parametrize(
    "size,new_size",
    [((256, 256), (96, 96)), ((150, 260), (92, 160)), ((7, 5), (13, 11)),
     ((480, 640), (800, 1066)), ((1000, 37), (123, 5)), ((33, 33), (33, 17))],
)  # fmt: skip
def test_resize_equals_detectron2(size, new_size):
    rng = np.random.default_rng(size[0])
    reference = ResizeTransform(*size, *new_size, Image.BILINEAR)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    # uint8: Pillow's filter, bit for bit
    np.testing.assert_array_equal(resize_image(image, *new_size), reference.apply_image(image))
    # floats: torch's interpolation, to float rounding
    for dtype, atol in ((np.float32, 1e-4), (np.float64, 1e-9), (np.float16, 0.125)):
        floats = (rng.random((*size, 3)) * 255).astype(dtype)
        actual = resize_image(floats, *new_size)
        assert actual.dtype == dtype
        np.testing.assert_allclose(actual, reference.apply_image(floats), rtol=0, atol=atol)


def test_resize_rule_equals_glip_d2():
    for h in (64, 333, 480, 1000):
        for w in (37, 333, 640, 1333):
            for short, longest in ((96, 160), (800, 1333), (224, 224)):
                expected = glip_d2_resize_shape(h, w, short, longest)
                assert glip_resize_shape(h, w, short, longest) == expected


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_prompts_equal_glip_d2(export_dir, chunk_size):
    tokenizer = load_tokenizer("bundled-minilm")
    builder = PromptJobBuilder(tokenizer, max_len=64, chunk_size=chunk_size, separator=". ")
    encoder = PromptEncoder(str(export_dir / "tokenizer" / "tokenizer.json"), 64, ". ", chunk_size)
    caption = "the  mouse sat on a traffic light, " * 8 + "near a cat"
    prompts = [
        ["mouse_(computer)_(wireless)", "traffic_light", "a___b", "Café"],
        LONG_VOCABULARY,
        CAPTION,
        # a phrase starting on a space, one with two spans, one partly cut by the truncation
        {
            "caption": caption,
            "phrase_spans": [[[3, 10]], [[20, 33], [55, 68]], [[20, 33], [265, 278]]],
        },
    ]
    for prompt in prompts:
        inputs = {"class_names": prompt} if isinstance(prompt, list) else prompt
        jobs = builder.jobs(0, inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the truncated phrase
            passes, _ = encoder.passes(prompt)
        assert len(passes) == len(jobs) >= 1
        for job, p in zip(jobs, passes, strict=True):
            tokens = tokenizer(job.caption, max_length=64, truncation=True)["input_ids"]
            assert p.caption == job.caption and p.input_ids.tolist() == [tokens]
            assert p.attention_mask.tolist() == [[1] * len(tokens)]
            assert p.phrase_ids.tolist() == list(job.phrase_ids)
            expected = builder.positive_map(job)[:, : len(tokens)].numpy()
            np.testing.assert_array_equal(p.positive_map, expected)


def test_nms_equals_glip_d2():
    rng = np.random.default_rng(0)
    # Anchors 8 px apart with small offsets: many pairs near the 0.6 IoU threshold, some at
    # exactly 0.6 (a 64 px box and its neighbour 16 px away).
    for count in (300, 1500):  # offsets between classes / class by class (over 1000 boxes)
        x = rng.integers(0, 20, count) * 8.0 + rng.choice([0, 0, 0.01, -0.3], count)
        y = rng.integers(0, 20, count) * 8.0
        boxes = np.stack([x, y, x + 63, y + 63], axis=1).astype(np.float32)
        scores = rng.random(count).astype(np.float32)
        labels = rng.integers(0, 3, count)
        expected = glip_d2_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                               torch.from_numpy(labels), 0.6).numpy()  # fmt: skip
        actual = nms_legacy(boxes, scores, labels, 0.6)
        assert 0 < len(actual) < count
        if count <= 1000:
            np.testing.assert_array_equal(actual, expected)
        else:  # the same kept set, by decreasing score
            assert sorted(actual) == sorted(expected)
            assert (np.diff(scores[actual]) <= 0).all()


@pytest.mark.parametrize(
    "image, prompt, error, match",
    [
        (np.zeros((64, 64, 3), np.uint16), NAMES, TypeError, "dtype uint16"),
        (np.zeros((64, 64), np.uint8), NAMES, ValueError, r"\(H, W, 3\).*\(64, 64\)"),
        (np.full((64, 64, 3), 0.5, np.float32), NAMES, ValueError, "normalised"),
        (np.full((64, 64, 3), np.nan, np.float32), NAMES, ValueError, "NaN"),
        (None, "two dogs on a sofa", TypeError, "free sentences"),
        (None, ["cat", " "], ValueError, "non-empty"),
        (None, ["a " * 70], ValueError, "alone takes 70 tokens"),
        (None, {"caption": "a cat", "phrase_spans": [[[2, 9]]]}, ValueError,
         r"phrase_spans\[0\].*\[2, 9\] lies outside"),
        # past MAX_QUERY_LEN (64 tokens): the phrase is cut away by the truncation
        (None, {"caption": "x " * 80 + "cat", "phrase_spans": [[[160, 163]]]}, ValueError,
         "covers no token.*truncated at 64 tokens"),
    ],
)  # fmt: skip
def test_bad_input_to_the_runtime_is_named(runtime, image, prompt, error, match):
    if image is None:
        image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(error, match=match):
        runtime(image, prompt)


def test_runtime_imports_only_numpy_onnxruntime_and_tokenizers():
    allowed = {"numpy", "onnxruntime", "tokenizers", *sys.stdlib_module_names}
    files = sorted((REPO_ROOT / "glip_d2" / "export" / "runtime").glob("*.py"))
    assert len(files) == 4
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:  # relative imports stay inside the runtime package
                continue
            for module in modules:
                assert module.split(".")[0] in allowed, f"{path.name} imports {module}"


def test_runtime_needs_an_export_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="glip_export.json not found"):
        GLIPRuntime(str(tmp_path))


def test_bad_input_to_the_export_command_is_named(tmp_path, capsys):
    cfg = ["--config-file", str(CONFIG), "--output", str(tmp_path / "out")]
    cases = [
        (["--config-file", "nope.yaml", "--output", str(tmp_path)], "config file 'nope.yaml'"),
        (cfg + ["MODEL.WEIGHTS"], "KEY VALUE pairs"),
        (cfg + ["MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
        (cfg + ["MODEL.WEIGHTS", "nope.pth"], "MODEL.WEIGHTS 'nope.pth' does not exist"),
        (cfg + ["MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING", "p.safetensors"], "PROMPT_EMBEDDING"),
    ]
    (tmp_path / "file").write_text("")
    cases.append((cfg[:2] + ["--output", str(tmp_path / "file")], "not a folder"))
    for argv, message in cases:
        assert export_main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_info:
        export_main(cfg + ["--format", "tflite"])
    assert exit_info.value.code == 2
