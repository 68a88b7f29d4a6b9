"""The web demo's FastAPI application around a :class:`~glip_d2.predictor.GLIPPredictor`.

Routes: ``GET /`` the page, ``POST /detect`` (multipart form: ``image`` file or ``example``
index, ``prompt``, ``kind``, ``threshold``) the result, ``GET /examples/<i>`` an example image.
Every failure of a request (unreadable upload, empty or refused prompt, bad threshold, an
exception in the model) is answered with an error message on the page; details go to the log.
"""

import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..visualization import detection_records, draw_detections
from .inputs import decode_image, parse_prompt_text
from .page import render_error, render_page, render_result

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 2**20
# Drawings are shown about this many pixels wide (small images enlarged, at most 2x, so that
# labels stay legible; large ones reduced so the page stays light).
DISPLAY_SIZE = 800


class _InputError(ValueError):
    """A request the page answers with a message and status 400."""


def _threshold(value):
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise _InputError(f"The score threshold {value!r} is not a number.") from None
    if not 0.0 <= threshold <= 1.0:
        raise _InputError(f"The score threshold must lie in [0, 1], got {threshold}.")
    return threshold


def create_app(
    predictor, *, examples=(), threshold=0.3, title="GLIP grounded detection", model_info=""
):
    """Build the app.

    Args:
        predictor: a :class:`GLIPPredictor` (any callable ``(image_bgr, prompt) -> {"instances",
            "phrases"}``); calls are serialised.
        examples (list[Example]): example images (:func:`glip_d2.web.inputs.load_examples`).
        threshold (float): the score threshold the page starts with.
        title (str), model_info (str): page heading and a line about the model.
    """
    examples = list(examples)
    lock = threading.Lock()
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    defaults = {
        "prompt": examples[0].prompt if examples else "",
        "kind": "names",
        "threshold": threshold,
        "example": "0" if examples else "",
    }

    def page(state, result_html=""):
        return render_page(
            title=title,
            model_info=model_info,
            examples=examples,
            state=state,
            result_html=result_html,
        )

    def detect(image_bgr, prompt, score_threshold, source):
        with lock:  # one request at a time: the model and matplotlib's drawing
            start = time.perf_counter()
            output = predictor(image_bgr, prompt)
            seconds = time.perf_counter() - start
            detections = detection_records(output, score_threshold)
            scale = min(2.0, DISPLAY_SIZE / max(image_bgr.shape[:2]))
            drawn = draw_detections(image_bgr[:, :, ::-1], detections, scale=scale).get_image()
        scores = output["instances"].scores
        return render_result(
            drawn_rgb=drawn,
            detections=detections,
            phrases=output["phrases"],
            threshold=score_threshold,
            best_score=float(scores.max()) if len(scores) else None,
            seconds=seconds,
            source=source,
        )

    async def read_image(form):
        upload = form.get("image")
        if isinstance(upload, UploadFile) and upload.filename:
            data = await upload.read(MAX_UPLOAD_BYTES + 1)
            if len(data) > MAX_UPLOAD_BYTES:
                raise _InputError(
                    f"{upload.filename!r} is larger than {MAX_UPLOAD_BYTES // 2**20} MB."
                )
            name = upload.filename
        elif str(form.get("example", "")).isdigit() and int(form["example"]) < len(examples):
            example = examples[int(form["example"])]
            with open(example.path, "rb") as f:
                data = f.read()
            name = example.name
        else:
            raise _InputError("No image: upload an image file or pick an example.")
        try:
            image, description = decode_image(data, name)
        except ValueError as e:
            raise _InputError(str(e)) from e
        return image, f"{name}: {description}"

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page(defaults)

    @app.get("/examples/{index}")
    def example_image(index: int):
        if not 0 <= index < len(examples):
            return Response(f"no example {index}", status_code=404, media_type="text/plain")
        return FileResponse(examples[index].path)

    @app.post("/detect", response_class=HTMLResponse)
    async def detect_route(request: Request):
        state = dict(defaults, example="")
        status = 200
        try:
            try:
                form = await request.form()
            except Exception as e:  # not multipart, or a malformed body
                raise _InputError(f"The form could not be read: {e}") from e
            state.update(
                prompt=str(form.get("prompt", "")),
                kind=str(form.get("kind", "names")),
                threshold=str(form.get("threshold", threshold)),
                example=str(form.get("example", "")),
            )
            score_threshold = _threshold(state["threshold"])
            try:
                prompt = parse_prompt_text(state["prompt"], state["kind"])
            except ValueError as e:
                raise _InputError(str(e)) from e
            image, source = await read_image(form)
            result = await run_in_threadpool(detect, image, prompt, score_threshold, source)
        except _InputError as e:
            status, result = 400, render_error(str(e))
        except Exception as e:  # the model refused the prompt, or failed: say so on the page
            logger.exception("detection failed")
            if isinstance(e, (ValueError, TypeError, ImportError)):
                status, result = 400, render_error(f"The model refused this prompt: {e}")
            else:
                status, result = 500, render_error(f"The model failed on this request: {e}")
        if request.headers.get("X-Glip-Fragment"):
            return HTMLResponse(result, status_code=status)
        return HTMLResponse(page(state, result), status_code=status)

    return app
