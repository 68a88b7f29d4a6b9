#!/usr/bin/env python
"""Train and evaluate GLIP with Detectron2's trainer.

Examples::

    # train (CPU: add MODEL.DEVICE cpu; several processes: --num-gpus N, GLOO on CPU)
    python train_net.py --config-file configs/synthetic/glip_small_synth.yaml
    # continue an interrupted run at its last checkpoint (iteration, optimizer, scheduler, EMA)
    python train_net.py --config-file ... --resume
    # evaluate a checkpoint (its EMA weights when SOLVER.EMA.ENABLED and the file has them)
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
"""

import os

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import glip_d2  # noqa: F401  (registers the model, backbones and datasets)
from glip_d2.config import add_glip_config
from glip_d2.engine import GLIPTrainer as Trainer
from glip_d2.engine import evaluate_checkpoint, setup_cfg

# D2's train_net convention: ``setup`` and ``Trainer`` live here (glip_d2.engine holds them).
setup = setup_cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        results = evaluate_checkpoint(cfg, resume=args.resume)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def hide_gpus_for_cpu_runs(args):
    """D2's ``launch`` picks NCCL whenever CUDA is visible; a CPU job (MODEL.DEVICE cpu) needs
    GLOO, so hide the GPUs from the worker processes before they start."""
    cfg = add_glip_config(get_cfg())
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    hide_gpus_for_cpu_runs(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
