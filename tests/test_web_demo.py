"""The web demo (demo/web.py, glip_d2.web): input parsing, and the page driven in headless
Chromium (Playwright) against a server in a subprocess serving the small test config with
random weights (every score passes threshold 0, so both phrases of a prompt get boxes).

Run by hand (``python tests/test_web_demo.py``) it saves screenshots to ``output/web_demo/``;
under pytest only when ``GLIP_WEB_SCREENSHOTS`` names a folder.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from glip_d2.web.inputs import decode_image, load_examples, parse_prompt_text

CONFIG = REPO_ROOT / "configs" / "quick_schedules" / "glip_small_instant_test.yaml"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000


# ------------------------------------------------------------------ inputs (no server)


def test_class_names_split_on_separators():
    assert parse_prompt_text("red circle. blue  star") == ["red circle", "blue star"]
    assert parse_prompt_text("red circle\nblue star,\n\ngreen square; red circle") == [
        "red circle",
        "blue star",
        "green square",
    ]


def test_bracketed_caption_gives_spans():
    prompt = parse_prompt_text(
        "a [red circle] left of a [ blue star ] and a [red circle]", "caption"
    )
    caption = "a red circle left of a  blue star  and a red circle"
    assert prompt == {
        "caption": caption,
        "phrase_spans": [[[2, 12], [41, 51]], [[24, 33]]],
        "phrases": ["red circle", "blue star"],
    }
    assert caption[24:33] == "blue star" and caption[41:51] == "red circle"


@pytest.mark.parametrize(
    "text, kind, match",
    [
        ("  \n ", "names", "prompt is empty"),
        (". ,;", "names", "No class name"),
        ("a red circle", "caption", "square brackets"),
        ("a [red circle", "caption", "never closed"),
        ("a red] circle", "caption", "without '\\['"),
        ("a [[red]] circle", "caption", "Nested"),
        ("a [ ] circle", "caption", "Empty"),
        ("cat", "regex", "unknown prompt kind"),
    ],
)
def test_bad_prompt_text_is_explained(text, kind, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt_text(text, kind)


def test_sentence_is_passed_on():
    assert parse_prompt_text(" a red  circle\nnear a star ", "sentence") == (
        "a red circle near a star"
    )


def _png(array):
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def test_decode_grey_rgba_and_16_bit():
    grey, info = decode_image(_png(np.full((4, 6), 100, np.uint8)), "g.png")
    assert grey.shape == (4, 6, 3) and grey.dtype == np.uint8 and (grey == 100).all()
    assert info == "PNG 6x4, L"
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (255, 0, 0, 255)  # opaque blue; the rest transparent -> white
    image, info = decode_image(_png(bgra), "a.png")
    assert image[0, 0].tolist() == [255, 0, 0] and image[1, 1].tolist() == [255, 255, 255]
    assert info.endswith("RGBA")
    deep, _ = decode_image(_png(np.array([[0, 1000, 2000]], np.uint16)), "d.png")
    assert deep[0, :, 0].tolist() == [0, 128, 255]


def test_decode_rejects_non_images_by_name():
    with pytest.raises(ValueError, match="'notes.txt' is not an image"):
        decode_image(b"hello, world", "notes.txt")
    with pytest.raises(ValueError, match="'x.png' is empty"):
        decode_image(b"", "x.png")
    ok, jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="'cut.jpg' is not an image"):
        decode_image(jpeg.tobytes()[:300], "cut.jpg")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from datasets.prepare_glip_synth import ensure_glip_synth

    root = tmp_path_factory.mktemp("web") / "glip_synth"
    return ensure_glip_synth(str(root), {"train": 1, "val": 1, "test_heldout": 3})


def test_examples_prompt_their_classes(synth_root):
    import json

    examples = load_examples(synth_root)
    with open(os.path.join(synth_root, "annotations", "instances_test_heldout.json")) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    first = [names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == 1]
    assert len(examples) == 3 and examples[0].name == "test_heldout/000000.jpg"
    assert examples[0].prompt.split(". ") == list(dict.fromkeys(first))
    assert os.path.isfile(examples[0].path)
    assert load_examples(os.path.join(synth_root, "missing")) == []


def _web_cli():
    spec = importlib.util.spec_from_file_location("web_cli", REPO_ROOT / "demo" / "web.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_finds_or_asks_for_the_main_job_model(tmp_path, monkeypatch):
    cli = _web_cli()
    monkeypatch.setattr(cli, "MAIN_JOB_DIR", tmp_path)
    with pytest.raises(SystemExit, match=r"no trained model at .*model_final.pth.*make demo"):
        cli.main_job_model(train=False)
    (tmp_path / "config.yaml").write_text(CONFIG.read_text())
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert cli.main_job_model(train=False) == (
        str(tmp_path / "config.yaml"),
        str(tmp_path / "model_final.pth"),
    )
    with pytest.raises(SystemExit, match="'nope.pth' does not exist"):
        cli.setup_cfg(cli.parse_args(["--config-file", str(CONFIG), "--weights", "nope.pth"]))
    cfg, _ = cli.setup_cfg(
        cli.parse_args(["--config-file", str(CONFIG), "MODEL.GLIP.INFERENCE_TH", "0.01"])
    )
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.GLIP.INFERENCE_TH == 0.01


# ------------------------------------------------------------------ the page in Chromium


def _chromium():
    """Path of a Chromium for Playwright, or None."""
    for candidate in (os.environ.get("GLIP_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(synth_root, tmp_path_factory):
    """The demo server in a subprocess; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    cmd = [sys.executable, str(REPO_ROOT / "demo" / "web.py"), "--config-file", str(CONFIG),
           "--weights", "", "--examples", synth_root, "--port", str(port), "--threshold", "0",
           "MODEL.GLIP.INFERENCE_TH", "0.0"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"demo/web.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo/web.py did not answer at {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = _chromium()
        if chromium is None and os.path.isfile(p.chromium.executable_path):
            chromium = p.chromium.executable_path  # one `playwright install chromium` fetched
        if chromium is None:
            pytest.skip("no Chromium found (apt-get install chromium, or set GLIP_CHROMIUM)")
        # launch() runs Chromium with a fresh temporary profile (user-data-dir) of its own.
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    yield page
    context.close()


def _screenshot(page, name):
    folder = os.environ.get("GLIP_WEB_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, name + ".png"), full_page=True)


def _submit(page):
    """Submit and wait until the result section shows a drawing or an error."""
    page.evaluate("document.getElementById('result').replaceChildren()")
    page.click("#submit")
    page.wait_for_selector("#result #drawn, #result #error")


def _upload(page, name, data, mime="image/png"):
    page.set_input_files("#image", files=[{"name": name, "mimeType": mime, "buffer": data}])


def _table_phrases(page):
    return page.locator("#detections tbody .phrase").all_inner_texts()


def _table_scores(page):
    return [float(s) for s in page.locator("#detections tbody td:nth-child(3)").all_inner_texts()]


def _shapes_png():
    image = np.full((240, 320, 3), 200, np.uint8)
    cv2.rectangle(image, (40, 50), (150, 170), (40, 40, 220), -1)  # a red square (BGR)
    cv2.circle(image, (240, 120), 50, (200, 60, 20), -1)  # a blue disc
    return _png(image)


def test_upload_prompt_and_see_detections(page):
    _upload(page, "shapes.png", _shapes_png())
    page.fill("#prompt", "red square\nblue disc")
    page.fill("#threshold", "0")
    _submit(page)
    assert page.locator("#error").count() == 0
    # the drawing is shown, enlarged 2x for this small image (labels stay legible)
    size = page.locator("#drawn").evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
    assert size == [True, 640, 480]
    assert "shapes.png: PNG 320x240, RGB" in page.inner_text("#result")
    assert page.locator("#phrases li").all_inner_texts()[0].startswith("red square (")
    assert set(_table_phrases(page)) == {"red square", "blue disc"}
    scores = _table_scores(page)
    assert scores == sorted(scores, reverse=True)
    _screenshot(page, "upload")
    # a higher threshold on the same upload (still chosen) keeps only the higher scores
    threshold = scores[len(scores) // 2]
    page.fill("#threshold", f"{threshold:.3f}")
    _submit(page)
    kept = _table_scores(page)
    assert kept and min(kept) >= threshold - 0.0005
    assert len(kept) < len(scores) or min(scores) >= threshold
    page.fill("#threshold", "0.99")
    _submit(page)
    assert "No detection scores 0.99 or more" in page.inner_text("#no-detections")


def test_example_and_caption(page, synth_root):
    example = load_examples(synth_root)[1]
    page.click("label[title='test_heldout/000001.jpg']")
    assert page.input_value("#prompt") == example.prompt
    _submit(page)
    assert set(_table_phrases(page)) == set(example.prompt.split(". "))
    page.check("input[name=kind][value=caption]")
    page.fill("#prompt", "a [shape] next to [another shape]")
    _submit(page)
    assert page.locator("#phrases li").all_inner_texts()[1].startswith("another shape (")
    assert set(_table_phrases(page)) == {"shape", "another shape"}
    _screenshot(page, "example_caption")


@pytest.mark.parametrize(
    "name, data, prompt, expected",
    [
        ("shapes.png", _shapes_png(), "   ", "The prompt is empty"),
        ("notes.txt", b"not an image at all", "red square", "'notes.txt' is not an image"),
        ("shapes.png", _shapes_png(), "a [red square", "is never closed"),
        # the model's own refusal: one name longer than the config's 64-token prompt
        ("shapes.png", _shapes_png(), "word " * 100, "The model refused this prompt: Category"),
    ],
)
def test_bad_input_shows_a_message(page, name, data, prompt, expected):
    _upload(page, name, data, "text/plain" if name.endswith(".txt") else "image/png")
    if "[" in prompt:
        page.check("input[name=kind][value=caption]")
    page.fill("#prompt", prompt)
    _submit(page)
    assert expected in page.inner_text("#error")
    assert page.locator("#drawn").count() == 0
    # the page lives on: a good request right after works
    _upload(page, "shapes.png", _shapes_png())
    page.check("input[name=kind][value=names]")
    page.fill("#prompt", "red square")
    _submit(page)
    assert page.locator("#drawn").count() == 1 and set(_table_phrases(page)) == {"red square"}


def test_grey_and_transparent_uploads(page):
    grey = _png(np.tile(np.arange(0, 240, 2, dtype=np.uint8), (90, 1)))
    bgra = np.zeros((100, 80, 4), np.uint8)
    bgra[20:60, 20:60] = (0, 0, 255, 255)
    for name, data, mode in (
        ("grey.png", grey, "PNG 120x90, L"),
        ("alpha.png", _png(bgra), "RGBA"),
    ):
        _upload(page, name, data)
        page.fill("#prompt", "red square")
        _submit(page)
        assert page.locator("#error").count() == 0 and mode in page.inner_text("#result")
        assert page.locator("#drawn").count() == 1


def test_free_sentence(page):
    page.check("input[name=kind][value=sentence]")
    page.fill("#prompt", "a red square next to a blue disc")
    _submit(page)
    if importlib.util.find_spec("spacy") is None:
        assert "needs spaCy" in page.inner_text("#error")
    else:
        assert page.locator("#drawn").count() == 1


def test_page_without_javascript(browser, server):
    """The form also works as a plain HTML form: the answer is the whole page."""
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.check("input[name=kind][value=caption]")
        page.fill("#prompt", "a [red square")
        page.click("#submit")
        page.wait_for_selector("#error")
        assert "is never closed" in page.inner_text("#error")
        # the form comes back as it was sent
        assert page.input_value("#prompt") == "a [red square"
        assert page.is_checked("input[name=kind][value=caption]")
        page.fill("#prompt", "a [red square]")
        page.click("#submit")  # example 0 is still chosen
        page.wait_for_selector("#drawn")
        assert set(_table_phrases(page)) == {"red square"}
    finally:
        context.close()


if __name__ == "__main__":
    os.environ.setdefault("GLIP_WEB_SCREENSHOTS", str(REPO_ROOT / "output" / "web_demo"))
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
