"""HTML of the web demo: one page with the form, and the result fragment it shows.

The page works without JavaScript (the form posts and the answer is the whole page); with it,
a small script posts the form in the background and swaps in only the result, so the chosen
file and the form stay as they were.
"""

import base64
from html import escape

import cv2

from ..visualization import phrase_color
from .inputs import PROMPT_KINDS

__all__ = ["render_error", "render_page", "render_result"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } .model { color: #555; font-size: .9em; }
main { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
form { flex: 0 0 24em; } #result { flex: 1 1 30em; }
fieldset { border: 1px solid #ccc; margin: 0 0 1em; } legend { font-weight: 600; }
textarea { width: 100%; box-sizing: border-box; font: inherit; }
.examples { display: flex; flex-wrap: wrap; gap: .4em; }
.examples label { cursor: pointer; } .examples img { width: 5.5em; border: 3px solid #ddd; }
.examples input { display: none; } .examples input:checked + img { border-color: #1a73e8; }
.hint { color: #666; font-size: .85em; } button { font-size: 1.1em; padding: .3em 1.5em; }
.error { background: #fde8e8; border: 1px solid #d33; padding: .7em; color: #900; }
table { border-collapse: collapse; margin-top: .8em; } td, th { padding: .2em .7em; }
tr:nth-child(even) { background: #f3f3f3; } td.num { text-align: right; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .4em; }
#drawn { max-width: 100%; border: 1px solid #ccc; }
"""

_SCRIPT = """
const form = document.getElementById("form"), result = document.getElementById("result");
const upload = document.getElementById("image"), prompt = document.getElementById("prompt");
const slider = document.getElementById("threshold-slider");
const threshold = document.getElementById("threshold");
slider.addEventListener("input", () => { threshold.value = slider.value; });
threshold.addEventListener("input", () => { slider.value = threshold.value; });
upload.addEventListener("change", () => {
  if (upload.files.length) form.querySelectorAll("input[name=example]").forEach(
    (r) => { r.checked = false; });
});
form.querySelectorAll("input[name=example]").forEach((r) => r.addEventListener("change", () => {
  upload.value = "";
  prompt.value = r.dataset.prompt;
  form.querySelector("input[name=kind][value=names]").checked = true;
}));
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = document.getElementById("submit");
  button.disabled = true;
  button.textContent = "Detecting...";
  try {
    const answer = await fetch(form.action, {
      method: "POST", body: new FormData(form), headers: {"X-Glip-Fragment": "1"}});
    result.innerHTML = await answer.text();
  } catch (err) {
    const p = document.createElement("p");
    p.className = "error"; p.id = "error"; p.setAttribute("role", "alert");
    p.textContent = "The server did not answer (" + err + "). Is the demo still running?";
    result.replaceChildren(p);
  } finally {
    button.disabled = false;
    button.textContent = "Detect";
  }
});
"""


def render_error(message):
    """The result fragment for an error: a message, never a stack trace."""
    return f'<p class="error" id="error" role="alert">{escape(message)}</p>'


def _data_url(image_rgb):
    ok, jpeg = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding of the drawn image failed")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")


def _swatch(index):
    r, g, b = (round(255 * c) for c in phrase_color(index))
    return f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>'


def render_result(*, drawn_rgb, detections, phrases, threshold, best_score, seconds, source):
    """The result fragment: the drawing, the phrases the prompt became and the detection table.

    Args:
        drawn_rgb (np.ndarray): the drawing (RGB).
        detections (list[dict]): records of :func:`glip_d2.visualization.detection_records`.
        phrases (list[str]): the prompt's phrases.
        threshold (float): the score threshold applied.
        best_score (float | None): the highest score before the threshold (None: no box).
        seconds (float): inference time.
        source (str): what the image was (file name, size, mode).
    """
    counts = [sum(d["phrase_index"] == i for d in detections) for i in range(len(phrases))]
    phrase_items = "".join(
        f"<li>{_swatch(i)}{escape(p)} ({n})</li>"
        for i, (p, n) in enumerate(zip(phrases, counts, strict=True))
    )
    if detections:
        rows = "".join(
            f"<tr><td class='num'>{k + 1}</td><td>{_swatch(d['phrase_index'])}"
            f"<span class='phrase'>{escape(d['phrase'])}</span></td>"
            f"<td class='num'>{d['score']:.3f}</td>"
            f"<td>{', '.join(f'{v:.0f}' for v in d['box_xyxy'])}</td></tr>"
            for k, d in enumerate(detections)
        )
        table = (
            '<table id="detections"><thead><tr><th>#</th><th>phrase</th><th>score</th>'
            f"<th>box x1, y1, x2, y2</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    else:
        best = "no box at all" if best_score is None else f"the best score is {best_score:.3f}"
        table = f'<p id="no-detections">No detection scores {threshold:.2f} or more ({best}).</p>'
    return (
        f'<p class="hint">{escape(source)}; {len(detections)} detections with score &ge; '
        f"{threshold:.2f} in {seconds:.2f} s.</p>"
        f'<img id="drawn" alt="detections drawn on the image" src="{_data_url(drawn_rgb)}">'
        f'<p>Phrases:</p><ul id="phrases">{phrase_items}</ul>{table}'
    )


def render_page(*, title, model_info, examples, state, result_html=""):
    """The whole page.

    Args:
        title (str): page heading.
        model_info (str): one line about the model being served.
        examples (list[Example]): example images, served at ``examples/<index>``.
        state (dict): form values: ``prompt``, ``kind``, ``threshold``, ``example`` (index
            as a string, or "").
        result_html (str): a fragment from :func:`render_result` / :func:`render_error`.
    """
    example_items = "".join(
        f'<label title="{escape(e.name)}"><input type="radio" name="example" value="{i}" '
        f'data-prompt="{escape(e.prompt)}"{" checked" if state["example"] == str(i) else ""}>'
        f'<img src="examples/{i}" alt="example {escape(e.name)}"></label>'
        for i, e in enumerate(examples)
    )
    examples_html = (
        f'<p class="hint">or pick an example (glip_synth):</p><div class="examples">'
        f"{example_items}</div>"
        if examples
        else ""
    )
    kinds = "".join(
        f'<label><input type="radio" name="kind" value="{k}"'
        f"{' checked' if state['kind'] == k else ''}> {escape(label)}</label><br>"
        for k, label in PROMPT_KINDS.items()
    )
    threshold = escape(str(state["threshold"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1><p class="model" id="model">{escape(model_info)}</p>
<main>
<form id="form" action="detect" method="post" enctype="multipart/form-data">
<fieldset><legend>Image</legend>
<input type="file" id="image" name="image" accept="image/*">{examples_html}</fieldset>
<fieldset><legend>Prompt</legend>
<textarea id="prompt" name="prompt" rows="4">{escape(state["prompt"])}</textarea>
{kinds}<p class="hint">Class names: "red circle. blue star" (or one per line, or commas).
Caption: "a [red circle] left of a [blue star]". A free sentence is split into noun phrases
(needs spaCy: pip install 'glip_d2[nlp]').</p></fieldset>
<fieldset><legend>Score threshold</legend>
<input type="range" id="threshold-slider" min="0" max="1" step="any" value="{threshold}">
<input type="number" id="threshold" name="threshold" min="0" max="1" step="any"
 value="{threshold}"></fieldset>
<button type="submit" id="submit">Detect</button>
</form>
<section id="result" aria-live="polite">{result_html}</section>
</main>
<script>{_SCRIPT}</script>
</body></html>
"""
