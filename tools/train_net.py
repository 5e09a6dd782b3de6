#!/usr/bin/env python
"""Train and evaluate condconv_det detectors (SSD, RetinaNet, R-CNN) with detectron2.

    python tools/train_net.py --config-file configs/shapes/ssd_condconv_MNv1.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth \
        MODEL.CONDCONV.EXPERT_DTYPE bfloat16                 # experts stored in bfloat16
    python tools/train_net.py --config-file CONFIG --resume          # continue the last run
    python tools/train_net.py --config-file CONFIG --num-gpus 2      # CPU-only: 2 gloo processes
    python tools/train_net.py --config-file configs/shapes/ssd_condconv_MNv1.yaml \\
        DATASETS.COCO_JSON.TRAIN train.json DATASETS.COCO_JSON.TRAIN_IMAGES train/ \\
        DATASETS.COCO_JSON.TEST val.json DATASETS.COCO_JSON.TEST_IMAGES val/    # your data

Config overrides go at the end as KEY VALUE pairs, like detectron2's tools.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import logging
import sys

from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det._compat import launch
from condconv_det.config import (
    config_key_sources,
    load_config,
    run_on_cpu_without_cuda,
    store_experts_for_inference,
)
from condconv_det.engine import Trainer, argument_parser
from condconv_det.engine.coco_json_config import apply_coco_json_config
from condconv_det.engine.output_dir import claim_output_dir
from condconv_det.engine.trainer import (
    check_datasets,
    check_num_classes,
    check_weights,
    num_classes_key,
)


def setup(args):
    """The config of ``args`` (file + overrides), frozen, with detectron2's logging set up."""
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    # Datasets given by their files: checked, registered and used (docs/own_data.md).
    sources = config_key_sources(args.config_file, args.opts)
    needs = ("test",) if args.eval_only else ("train", "test")
    own_data = apply_coco_json_config(cfg, sources, needs)
    fell_back = run_on_cpu_without_cuda(cfg)  # announced below, once the logger exists
    cfg.freeze()
    if not args.eval_only and comm.is_main_process():
        # Before default_setup writes config.yaml and the log into the folder.
        claim_output_dir(
            cfg.OUTPUT_DIR, resume=args.resume, overwrite=getattr(args, "overwrite", False)
        )
    default_setup(cfg, args)
    logger = logging.getLogger("detectron2")
    if fell_back:
        logger.warning(
            "MODEL.DEVICE is cuda but CUDA is not available: running on the CPU instead."
        )
    for change in own_data.changes if own_data else ():
        logger.info(change)
    return cfg


def main(args):
    cfg = setup(args)
    check_datasets(cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        check_num_classes(model, cfg.DATASETS.TEST, num_classes_key(cfg))
        checkpointer = Trainer.build_checkpointer(model, cfg)
        checkpointer.match = "strict"  # every weight evaluated comes from the checkpoint
        resumable = args.resume and checkpointer.has_checkpoint()
        check_weights(
            cfg.MODEL.WEIGHTS,
            required=not resumable,
            empty_resume_dir=cfg.OUTPUT_DIR if args.resume else None,
        )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        store_experts_for_inference(model.eval(), cfg)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    check_weights(cfg.MODEL.WEIGHTS, required=False)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = argument_parser().parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
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
