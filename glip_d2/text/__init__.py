"""Everything between a user's prompt and token tensors.

Tokenizer loading (:mod:`.tokenizer`), phrase spans and their validation (:mod:`.spans`),
detection prompts and chunks (:mod:`.prompts`), user prompt forms (:mod:`.user_prompts`), noun
phrases of free sentences (:mod:`.noun_phrases`) or from token scores (:mod:`.phrase_finder`),
positive maps (:mod:`.positive_map`) and the
per-image prompt jobs of a batch (:mod:`.prompt_jobs`). This package imports no other part of
glip_d2; data, modeling, evaluation and the predictor import it.
"""

from .noun_phrases import extract_noun_phrases, spacy_available
from .phrase_finder import find_phrases
from .positive_map import build_positive_map
from .prompt_jobs import PromptJob, PromptJobBuilder
from .prompts import (
    TrainingPromptSampler,
    build_detection_prompt,
    chunk_phrases,
    clean_name,
    count_prompt_tokens,
    prompt_fits,
    warn_vocabulary,
)
from .spans import check_phrase_spans, check_spans, record_phrase_sets, record_phrases
from .tokenizer import load_tokenizer
from .user_prompts import normalize_prompt

__all__ = [
    "PromptJob",
    "PromptJobBuilder",
    "TrainingPromptSampler",
    "build_detection_prompt",
    "build_positive_map",
    "check_phrase_spans",
    "check_spans",
    "chunk_phrases",
    "clean_name",
    "count_prompt_tokens",
    "extract_noun_phrases",
    "find_phrases",
    "load_tokenizer",
    "normalize_prompt",
    "prompt_fits",
    "record_phrase_sets",
    "record_phrases",
    "spacy_available",
    "warn_vocabulary",
]
