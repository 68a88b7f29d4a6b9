"""Phrase types of Flickr30K Entities (people, clothing, bodyparts, animals, vehicles,
instruments, scene, other), read from the dataset's ``Sentences/<image>.txt`` files.

MDETR's Flickr30K json (what glip_d2 trains and evaluates on) has no phrase types; the official
evaluator reads them from these files to report recall per type (microsoft/GLIP
maskrcnn_benchmark/data/datasets/evaluation/flickr/flickr_eval.py, ``get_sentence_data``).
A sentence line marks each phrase as ``[/EN#<entity id>/<type>[/<type>...] words ...]``;
MDETR's caption is the sentence without the markup, words joined by one space, and each
phrase's span is the char range of its words in it (ashkamath/mdetr scripts/pre-training/
flickr_combined.py, ``convert``), so a record's phrases find their types by span.
"""

import logging
import os

from detectron2.utils.file_io import PathManager

from ...text import record_phrases

__all__ = ["attach_flickr_phrase_types", "read_flickr_sentences"]

logger = logging.getLogger(__name__)


def read_flickr_sentences(path):
    """Parse one ``Sentences/<image>.txt`` file.

    Returns:
        list[(str, list[dict])]: per sentence line, the plain sentence and its phrases, each
        ``{"span": (start, end), "entity": str, "types": list[str], "text": str}``.
    """
    with PathManager.open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    sentences = []
    for line in lines:
        words, phrases, current = [], [], None
        for token in line.split():
            if current is None and token.startswith("[/EN#"):
                _, entity, *types = token[1:].split("/")
                current = {"entity": entity[3:], "types": types, "first": len(words)}
                continue
            closing = current is not None and token.endswith("]")
            words.append(token[:-1] if closing else token)
            if closing:
                start = sum(len(w) + 1 for w in words[: current["first"]])
                text = " ".join(words[current["first"] :])
                phrases.append(
                    {
                        "span": (start, start + len(text)),
                        "entity": current["entity"],
                        "types": current["types"],
                        "text": text,
                    }
                )
                current = None
        if current is not None:
            raise ValueError(f"{path}: unclosed phrase [/EN#{current['entity']} in {line!r}")
        sentences.append((" ".join(words), phrases))
    return sentences


def attach_flickr_phrase_types(records, entities_dir):
    """Add ``phrase_types`` (per test-time phrase, a list of types) to MDETR Flickr records.

    Each record's ``original_img_id`` and ``sentence_id`` name its sentence in
    ``{entities_dir}/Sentences/{original_img_id}.txt``; its phrases (those of
    :func:`glip_d2.text.record_phrases` at test time, i.e. ``tokens_positive_eval``) take the
    types of the sentence phrases with the same spans. Without a ``Sentences`` folder the
    records are returned unchanged (recall is then reported for "all" only).

    Raises:
        ValueError: a missing sentence file or line, a caption that is not the sentence, or a
            phrase that is no phrase of the sentence, naming the file and the image id.
    """
    folder = os.path.join(entities_dir, "Sentences")
    if not PathManager.isdir(folder):
        logger.info("No %s: Flickr recall is reported without phrase types", folder)
        return records
    cache = {}
    for r in records:
        if "original_img_id" not in r or "sentence_id" not in r:
            raise ValueError(
                f"record image_id={r.get('image_id')}: no original_img_id/sentence_id to find "
                f"its sentence in {folder}"
            )
        path = os.path.join(folder, f"{r['original_img_id']}.txt")
        if path not in cache:
            if not PathManager.isfile(path):
                raise ValueError(f"{path} is missing (record image_id={r['image_id']})")
            cache[path] = read_flickr_sentences(path)
        where = f"{path}, sentence {r['sentence_id']} (record image_id={r['image_id']})"
        if not 0 <= int(r["sentence_id"]) < len(cache[path]):
            raise ValueError(f"{where}: the file has {len(cache[path])} sentences")
        sentence, phrases = cache[path][int(r["sentence_id"])]
        if sentence != r["caption"]:
            raise ValueError(f"{where}: sentence {sentence!r} is not the caption {r['caption']!r}")
        types_at = {p["span"]: p["types"] for p in phrases}
        annos = [a for a in r.get("annotations", []) if a.get("tokens_positive")]
        record_types = []
        for spans in record_phrases(r, annos, use_eval_phrases=True)[0]:
            found = [types_at.get(tuple(s)) for s in spans]
            if None in found:
                raise ValueError(f"{where}: spans {spans} are no phrase of {sentence!r}")
            record_types.append(list(dict.fromkeys(t for types in found for t in types)))
        r["phrase_types"] = record_types
    return records
