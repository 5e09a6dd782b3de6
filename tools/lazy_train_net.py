#!/usr/bin/env python
"""Train and evaluate condconv_det detectors from LazyConfig (``.py``) configs, following
detectron2's ``tools/lazyconfig_train_net.py``: the config defines ``model``, ``dataloader``,
``optimizer``, ``lr_multiplier`` and ``train``, and everything is built with ``instantiate``.

    python tools/lazy_train_net.py --config-file configs/shapes/ssd_condconv_MNv1.py
    python tools/lazy_train_net.py --config-file CONFIG --eval-only \\
        train.init_checkpoint=output/model_final.pth
    python tools/lazy_train_net.py --config-file CONFIG --resume        # continue the last run
    python tools/lazy_train_net.py --config-file CONFIG train.max_iter=100 \\
        dataloader.train.total_batch_size=4                             # overrides, key=value
    python tools/lazy_train_net.py --config-file configs/shapes/ssd_condconv_MNv1.py \\
        train.coco_json.train=train.json train.coco_json.train_images=train/ \\
        train.coco_json.test=val.json train.coco_json.test_images=val/  # your data

Differences from detectron2's tool, each needed here: checkpoints load through
``CondConvCheckpointer`` (static ImageNet weights are upcycled into CondConv layers), the run
falls back to the CPU when ``train.device`` is CUDA and there is none, DDP works on CPU (gloo),
unknown datasets and missing checkpoints fail before anything is built, and ``main`` returns the
final evaluation's results.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import logging
import os
import sys
from typing import Any, Dict, List

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det._compat import create_ddp_model, launch, simple_trainer_saves_optimizer
from condconv_det.checkpoint import CondConvCheckpointer
from condconv_det.engine import argument_parser
from condconv_det.engine.coco_json_config import apply_coco_json_lazy
from condconv_det.engine.hooks import (
    RoutingStartHook,
    RoutingStatsHook,
    RoutingTemperatureHook,
)
from condconv_det.engine.output_dir import claim_output_dir
from condconv_det.engine.trainer import check_datasets, check_num_classes, check_weights

logger = logging.getLogger("detectron2")


def do_test(cfg, model: torch.nn.Module) -> Dict[str, Any]:
    """Evaluates ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Returns:
        the evaluator's results (e.g. ``{"bbox": {"AP": ..., "AP50": ...}}``); empty without an
        evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    # The loader first: the bundled dataset writes its COCO json at its first load, and the
    # COCOEvaluator reads that json when built.
    data_loader = instantiate(cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, data_loader, evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg) -> Dict[str, Any]:
    """Trains ``cfg.model`` for ``cfg.train.max_iter`` iterations with detectron2's hooks.

    Returns:
        the results of the last evaluation (at the end of training), or {} without an evaluator.
    """
    model = instantiate(cfg.model)
    names = _dataset_names(cfg.dataloader.get("train", None)) + _dataset_names(
        cfg.dataloader.get("test", None)
    )
    check_num_classes(model, names, _num_classes_key(model))
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    ddp = dict(cfg.train.get("ddp", {}))
    fp16_compression = ddp.pop("fp16_compression", False)
    model = create_ddp_model(model, **ddp)
    if fp16_compression and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        model.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    trainer_class = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_class(model, train_loader, optimizer)
    checkpointables = {"trainer": trainer}
    if not simple_trainer_saves_optimizer():
        checkpointables["optimizer"] = optimizer
    checkpointer = CondConvCheckpointer(
        model,
        cfg.train.output_dir,
        match=cfg.train.get("weights_match", "strict"),
        upcycle_noise=cfg.train.get("upcycle_noise", 0.01),
        upcycle_routers=cfg.train.get("upcycle_routers", "uniform"),
        **checkpointables,
    )

    last_results: Dict[str, Any] = {}

    def test_and_keep() -> Dict[str, Any]:
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return dict(last_results)

    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter)
    routing_period = cfg.train.get("routing_stats_period", 0)
    if not isinstance(routing_period, int) or routing_period < 0:
        raise ValueError(
            f"train.routing_stats_period must be an int >= 0 (0: off), got {routing_period!r}"
        )
    schedule = dict(cfg.train.get("routing_temperature_schedule", {}) or {})
    unknown = set(schedule) - {"start", "iters"}
    if unknown:
        raise ValueError(
            f"train.routing_temperature_schedule takes start and iters, got {sorted(unknown)}"
        )
    iters = schedule.get("iters", 0)
    if not isinstance(iters, int) or not 0 <= iters <= cfg.train.max_iter:
        raise ValueError(
            f"train.routing_temperature_schedule.iters must be an int in [0, train.max_iter "
            f"= {cfg.train.max_iter}], got {iters!r}"
        )
    temperature_hook = None
    if iters > 0:
        # The routers' own temperature is where the annealing ends (the YAML configs'
        # MODEL.CONDCONV.TEMPERATURE_SCHEDULE with ROUTING_TEMPERATURE).
        temperature_hook = RoutingTemperatureHook(schedule.get("start", 1.0), iters)
    start_iter = cfg.train.get("routing_start_iter", 0)
    if not isinstance(start_iter, int) or not 0 <= start_iter < max(cfg.train.max_iter, 1):
        raise ValueError(
            "train.routing_start_iter must be an int in "
            f"[0, train.max_iter = {cfg.train.max_iter}), "
            f"got {start_iter!r}"
        )
    trainer.register_hooks(
        [
            # As in condconv_det.engine.Trainer: routing held until its start iteration.
            RoutingStartHook(start_iter) if start_iter > 0 else None,
            # First, as in condconv_det.engine.Trainer: every hook sees the step's temperature.
            temperature_hook,
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # Before evaluation and the writers, as in condconv_det.engine.Trainer.
            RoutingStatsHook(routing_period) if routing_period > 0 else None,
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            hooks.PeriodicWriter(writers, period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results


def _dataset_names(loader_cfg) -> List[str]:
    """The dataset names of a loader node built by ``get_detection_dataset_dicts``, if any."""
    dataset = loader_cfg.get("dataset", None) if loader_cfg is not None else None
    names = dataset.get("names", None) if hasattr(dataset, "get") else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _num_classes_key(model) -> str:
    return "model.roi_heads.num_classes" if hasattr(model, "roi_heads") else "model.num_classes"


def _check_checkpoint(path: str, required: bool) -> None:
    check_weights(path, required, key="train.init_checkpoint", sep="=")


def setup(args):
    """The config of ``args`` (file + key=value overrides), with detectron2's logging set up."""
    if not args.config_file:
        sys.exit("error: --config-file is required (e.g. configs/shapes/ssd_condconv_MNv1.py)")
    if not os.path.isfile(args.config_file):
        sys.exit(f"error: config file {args.config_file!r} does not exist")
    if not args.config_file.endswith(".py"):
        sys.exit(
            f"error: {args.config_file!r} is not a LazyConfig (.py); YAML configs train with "
            "tools/train_net.py"
        )
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    # Datasets given by their files: checked, registered and used (docs/own_data.md).
    if args.eval_only:
        needs = ("test",)
    else:
        needs = ("train", "test") if "evaluator" in cfg.dataloader else ("train",)
    own_data = apply_coco_json_lazy(cfg, args.opts, needs)
    fell_back = str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available()
    if fell_back:
        # Announced (below, once the logger exists) rather than a crash in model.to().
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False  # detectron2's AMPTrainer needs CUDA
    if not args.eval_only and comm.is_main_process():
        # Before default_setup writes config.yaml and the log into the folder.
        claim_output_dir(
            cfg.train.output_dir,
            resume=args.resume,
            overwrite=getattr(args, "overwrite", False),
            key="train.output_dir",
        )
    default_setup(cfg, args)
    if fell_back:
        logger.warning(
            "train.device is cuda but CUDA is not available: running on the CPU instead."
        )
    for change in own_data.changes if own_data else ():
        logger.info(change)
    return cfg


def main(args) -> Dict[str, Any]:
    cfg = setup(args)
    test_names = _dataset_names(cfg.dataloader.get("test", None))
    train_names = [] if args.eval_only else _dataset_names(cfg.dataloader.get("train", None))
    check_datasets(train_names + test_names)
    if args.eval_only:
        model = instantiate(cfg.model)
        check_num_classes(model, test_names, _num_classes_key(model))
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        checkpointer = CondConvCheckpointer(model, cfg.train.output_dir)  # strict
        resumable = args.resume and checkpointer.has_checkpoint()
        check_weights(
            cfg.train.init_checkpoint,
            required=not resumable,
            key="train.init_checkpoint",
            sep="=",
            empty_resume_dir=cfg.train.output_dir if args.resume else None,
        )
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, model)
    _check_checkpoint(cfg.train.init_checkpoint, required=False)
    return do_train(args, cfg)


def invoke_main() -> None:
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
