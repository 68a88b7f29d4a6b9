"""The prompt cache (glip_d2/modeling/prompt_cache.py): GLIPPredictor and the evaluation loop
encode each prompt string once; the detections stay the model's own; the cache is bounded,
empties itself when the text encoder's weights change, and is never used in training."""

import numpy as np
import pytest
import torch
from conftest import detector_variant, reference_cfg
from detection_sets import assert_same_instances
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from glip_d2.engine import CachedPromptInference
from glip_d2.modeling import TextFeatureCache
from glip_d2.predictor import GLIPPredictor

THREE = ("a red square. a blue disc. a green ring", [[[2, 12]], [[16, 25]], [[29, 39]]])
ONE = ("a cat", [[[2, 5]]])
NAMES = ["cat", "dog", "traffic light", "zebra", "bus"]


def _cfg():
    cfg = reference_cfg()
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0  # untrained scores are about 0.01
    cfg.MODEL.GLIP.PROMPT_CACHE_SIZE = 2
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg()).eval()


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def _equal(a, b):
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def _same(a, b):
    assert len(a) > 0
    assert_same_instances(a, b, box_tol=1e-4, score_tol=1e-5)


def _uncached(predictor, image, prompt):
    data, _ = predictor.prepare(image, prompt)
    with torch.no_grad():
        return predictor.model([data])[0]["instances"]


def test_same_detections_bounded_lru(model):
    predictor = GLIPPredictor(_cfg(), model=model)
    cache = predictor.text_cache
    image = _image(0)
    first = predictor(image, THREE)["instances"]
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    again = predictor(image, THREE)["instances"]
    assert (cache.hits, cache.misses) == (1, 1)
    _equal(again, first)  # one prompt alone: bit for bit
    _equal(first, _uncached(predictor, image, THREE))
    # Size 2, least recently used dropped: ONE, then THREE again, then the class names.
    predictor(image, ONE)
    predictor(image, THREE)
    predictor(image, NAMES)
    assert len(cache) == 2 and THREE[0] in cache and ONE[0] not in cache
    assert (cache.hits, cache.misses) == (2, 3)


def test_batch_of_cached_and_new_prompts_equals_each_alone(model):
    """A cached 13-token prompt and a new 3-token one in one pass: the cached features are
    padded with zero rows to the pass's length; each image gets what it gets alone."""
    predictor = GLIPPredictor(_cfg(), model=model)
    images = [_image(1), _image(2)]
    predictor(images[0], THREE)
    both = predictor.predict_batch(images, [THREE, ONE])
    assert predictor.text_cache.hits == 1
    for image, prompt, out in zip(images, (THREE, ONE), both, strict=True):
        _same(out["instances"], _uncached(predictor, image, prompt))


def test_weight_changes_empty_the_cache(model):
    predictor = GLIPPredictor(_cfg(), model=model)
    cache, image = predictor.text_cache, _image(3)
    before = predictor(image, THREE)["instances"]
    layer_norm = model.language_backbone.model.embeddings.LayerNorm.weight
    saved = {k: v.clone() for k, v in model.language_backbone.state_dict().items()}
    try:
        with torch.no_grad():
            layer_norm.mul_(1.5)  # as an optimizer step does: in place
        changed = predictor(image, THREE)["instances"]
        assert cache.misses == 2 and len(cache) == 1
        _equal(changed, _uncached(predictor, image, THREE))
        assert not torch.equal(changed.scores, before.scores)
    finally:
        model.language_backbone.load_state_dict(saved)  # loading weights: also a change
    _equal(predictor(image, THREE)["instances"], before)
    assert cache.misses == 3


def test_not_used_in_training_or_with_gradients(model):
    predictor = GLIPPredictor(_cfg(), model=model)
    predictor(_image(4), THREE)  # positive maps and text made under torch.inference_mode
    data, _ = predictor.prepare(_image(4), THREE)
    cache = TextFeatureCache(4)
    model.inference([data], text_cache=cache)  # gradients on: no cache
    assert len(cache) == 0 and cache.misses == 0
    model.train()
    try:
        with torch.no_grad():
            model.inference([data], text_cache=cache)
        assert len(cache) == 0
        with pytest.raises(RuntimeError, match="training mode"):
            predictor(_image(4), THREE)
        # Training on the same prompt after the predictor ran: nothing made in inference
        # mode reaches autograd.
        inst = Instances((64, 96), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 50.0]])))
        inst.gt_classes = torch.tensor([1])
        losses = model([{**data, "instances": inst}])
        sum(losses.values()).backward()
        assert model.head.bias0.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_chunks_of_a_vocabulary_are_encoded_once(model):
    chunked = detector_variant(model, chunk_size=2)
    cfg = _cfg()
    cfg.MODEL.GLIP.PROMPT_CACHE_SIZE = 8
    predictor = GLIPPredictor(cfg, model=chunked)
    for seed in (5, 6, 7):
        out = predictor(_image(seed), NAMES)
        assert out["phrases"] == NAMES and len(out["instances"]) > 0
    assert (predictor.text_cache.misses, predictor.text_cache.hits) == (3, 6)  # 3 chunks


class _Collect(DatasetEvaluator):
    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs.extend(o["instances"] for o in outputs)

    def evaluate(self):
        return {}


def test_evaluation_loop_encodes_the_dataset_prompt_once(model):
    predictor = GLIPPredictor(_cfg(), model=model)
    loader = [[predictor.prepare(_image(seed), THREE)[0]] for seed in (8, 9, 10)]
    runner = CachedPromptInference(model, cache_size=4)
    model.train()  # as during training: evaluated in eval mode, then back to training
    try:
        collect = _Collect()
        inference_on_dataset(runner, loader, collect)
        assert model.training
    finally:
        model.eval()
    assert (runner.text_cache.misses, runner.text_cache.hits) == (1, 2)
    for batch, out in zip(loader, collect.outputs, strict=True):
        with torch.no_grad():
            _equal(out, model(batch)[0]["instances"])


def test_full_cache_with_new_and_cached_prompts_in_one_call(model):
    """A full cache, then one call with a new prompt before a cached one: storing the new one
    evicts the least recently used entry, which must not be the cached prompt still needed
    (it used to be: a KeyError in the pseudo-labelling run of demo/self_training.py)."""
    predictor = GLIPPredictor(_cfg(), model=model)  # PROMPT_CACHE_SIZE 2
    cache, lang, images = predictor.text_cache, model.language_backbone, [_image(4), _image(5)]
    with torch.no_grad():
        first = cache.encode(lang, [THREE[0], ONE[0]], "cpu")  # full: THREE, then ONE
        both = cache.encode(lang, ["a zebra", THREE[0]], "cpu")  # THREE is the LRU entry
    assert (cache.hits, cache.misses) == (1, 3)
    assert len(cache) == 2 and "a zebra" in cache and THREE[0] in cache and ONE[0] not in cache
    assert torch.equal(both.hidden[1], first.hidden[0])  # THREE is the longer prompt
    out = predictor.predict_batch(images, [ONE, THREE])  # ONE evicted: encoded again
    for image, prompt, got in zip(images, (ONE, THREE), out, strict=True):
        _same(got["instances"], _uncached(predictor, image, prompt))
