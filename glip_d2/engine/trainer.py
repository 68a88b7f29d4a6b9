"""GLIP's Detectron2 trainer: ``DefaultTrainer`` with GLIP's loader, optimizer, step loop,
checkpointer, EMA and evaluators; and the config setup shared by ``train_net.py`` and the demo."""

import logging
import weakref
from collections import OrderedDict
from contextlib import nullcontext

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, default_setup, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import GLIPCheckpointer
from ..config import add_glip_config
from ..data.build import build_grounding_train_loader
from ..data.datasets import register_pseudo_label_sets
from ..data.datasets.coco import register_coco_from_cfg
from ..data.mapper import GroundingDatasetMapper
from ..evaluation import average_over_datasets, build_glip_evaluator
from .ema import EMAHook, ModelEMA
from .inference import CachedPromptInference
from .optimizer import apply_tuning_mode, build_glip_optimizer
from .prompt_tuning import PromptEmbeddingSaver, maybe_load_prompt_embedding
from .retrieval import add_retrieval_results, split_retrieval_sets
from .train_loop import build_train_loop

__all__ = ["GLIPTrainer", "evaluate_checkpoint", "setup_cfg"]

logger = logging.getLogger(__name__)


class GLIPTrainer(DefaultTrainer):
    """D2's ``DefaultTrainer`` for GLIP.

    Differences: the grounding train loader (dataset mixing), GLIP's optimizer (LANG_LR, bias
    and norm groups, whole-model clipping, tuning modes), a step loop with bf16 autocast on CPU
    that skips a few non-finite steps and then stops (``SOLVER.GLIP.MAX_SKIPPED_STEPS``),
    :class:`GLIPCheckpointer` (official files; refuses to save NaN/Inf weights), an optional EMA
    of the weights (saved in the checkpoints, used for evaluation), and per-dataset evaluators
    with the ODinW average.
    """

    def __init__(self, cfg):
        # Where DefaultTrainer offers a builder (model, optimizer, loaders, scheduler, hooks,
        # evaluators) this class overrides it. Its __init__ also hard-wires three things
        # without a builder: SimpleTrainer/AMPTrainer (here the bf16-on-CPU step loop),
        # create_ddp_model without find_unused_parameters (needed by the frozen tuning
        # modes) and DetectionCheckpointer (here GLIPCheckpointer with the EMA state). So
        # this is DefaultTrainer.__init__'s construction order with those three replaced.
        TrainerBase.__init__(self)
        register_coco_from_cfg(cfg)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # find_unused_parameters: the frozen parts of linear-probe / prompt tuning and
        # phrases-free batches leave some parameters without gradients.
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.SOLVER.GLIP.TUNING != "full",
            **({"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}),
        )
        self._trainer = build_train_loop(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GLIPCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_unexpected_keys=cfg.MODEL.GLIP.ALLOW_UNEXPECTED_KEYS,
            trainer=weakref.proxy(self),
        )
        self.ema = None
        if cfg.SOLVER.EMA.ENABLED:
            self.ema = ModelEMA(model, cfg.SOLVER.EMA.DECAY)
            self.checkpointer.add_checkpointable("ema", self.ema)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.ema is not None and not self.ema.loaded_from_checkpoint:
            # Start the average at the loaded MODEL.WEIGHTS, not at the random initialisation.
            self.ema.reset(self.model)

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        apply_tuning_mode(cfg, model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_glip_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_grounding_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=GroundingDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_glip_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """D2's ``test`` over ``DATASETS.TEST``, plus the average AP of the ODinW sets; caption
        retrieval sets (evaluator_type "retrieval") go to ``evaluate_retrieval``.

        The detection sets run in inference mode with one prompt cache for the whole evaluation
        (:class:`CachedPromptInference`); any other model is called as D2 calls it.
        """
        detection_cfg, retrieval = split_retrieval_sets(cfg)
        if retrieval and evaluators is not None:
            raise ValueError(
                "GLIPTrainer.test: pass no evaluators when DATASETS.TEST has retrieval sets"
            )
        detection = list(detection_cfg.DATASETS.TEST)
        bare = model.module if isinstance(model, DistributedDataParallel) else model
        runner = model
        if hasattr(bare, "inference"):
            runner = CachedPromptInference(model, cfg.MODEL.GLIP.PROMPT_CACHE_SIZE)
        results = super().test(detection_cfg, runner, evaluators) if detection else OrderedDict()
        odinw = [
            d
            for d in cfg.DATASETS.TEST
            if MetadataCatalog.get(d).get("evaluator_type", None) == "odinw"
        ]
        if len(odinw) > 1 and comm.is_main_process():
            results = average_over_datasets(results, odinw)
        return add_retrieval_results(results, cfg, model, detection, retrieval)

    def build_hooks(self):
        """Timer, LR schedule, EMA (before the checkpointer, so checkpoints hold the current
        average), periodic checkpoints, the prompt embedding file after prompt tuning,
        evaluation (with the EMA weights), writers. No
        PreciseBN: GLIP has no BatchNorm statistics to re-estimate."""
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if self.ema is not None:
            ret.append(EMAHook(self.ema, self.model))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            if cfg.SOLVER.GLIP.TUNING == "prompt":  # the tuned table on its own, at the end
                ret.append(PromptEmbeddingSaver(cfg))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate))
        if comm.is_main_process():
            ret.append(
                hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.GLIP.LOG_PERIOD)
            )
        return ret

    def _evaluate(self):
        with self.ema.apply_to(self.model) if self.ema is not None else nullcontext():
            self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results


def setup_cfg(args):
    """get_cfg + add_glip_config + the config file + command-line overrides + default_setup;
    registers the ``DATASETS.GLIP.REGISTER_COCO`` and ``DATASETS.GLIP.PSEUDO_LABEL_SETS`` sets."""
    cfg = get_cfg()
    add_glip_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_coco_from_cfg(cfg)
    register_pseudo_label_sets(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glip_d2")
    return cfg


def evaluate_checkpoint(cfg, resume=False):
    """Evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, the last checkpoint of OUTPUT_DIR).

    With ``SOLVER.EMA.ENABLED`` and an EMA state in the file, its averaged weights are used;
    ``MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING`` is loaded on top.
    """
    model = GLIPTrainer.build_model(cfg)
    checkpointer = GLIPCheckpointer(
        model, save_dir=cfg.OUTPUT_DIR, allow_unexpected_keys=cfg.MODEL.GLIP.ALLOW_UNEXPECTED_KEYS
    )
    ema = ModelEMA(model, cfg.SOLVER.EMA.DECAY) if cfg.SOLVER.EMA.ENABLED else None
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema)
    path = (
        checkpointer.get_checkpoint_file()
        if resume and checkpointer.has_checkpoint()
        else cfg.MODEL.WEIGHTS
    )
    checkpointer.load(path)
    if ema is not None and ema.loaded_from_checkpoint:
        logger.info(f"Evaluating the EMA weights of {path}")
        ema.copy_to(model)
    maybe_load_prompt_embedding(cfg, model)
    return GLIPTrainer.test(cfg, model)
