"""The trainer of ``tools/train_net.py``: detectron2's ``DefaultTrainer`` with what it lacks here.

Differences from ``DefaultTrainer``, each needed by condconv_det's users (the workarounds for
detectron2 itself are in :mod:`condconv_det._compat`):

- the optimizer (and AMP grad scaler) is checkpointed, so ``--resume`` continues with momentum:
  detectron2 0.6 saves only the iteration and the LR scheduler (upstream main saves both);
- checkpoints load through :class:`~condconv_det.checkpoint.CondConvCheckpointer`, which
  upcycles static ImageNet weights into CondConv layers;
- SSD configs get the SSD data mapper (augmentations of the SSD paper, fixed square input);
- COCO evaluation falls back to pycocotools when detectron2 was built without its C++ ops;
- DDP works on CPU (gloo): detectron2's ``create_ddp_model`` passes GPU ``device_ids``;
- an image that fails to load names its file instead of failing deep inside a worker;
- with ``MODEL.CONDCONV.ROUTING_STATS.ENABLED``, routing statistics are logged
  (:class:`~condconv_det.engine.hooks.RoutingStatsHook`);
- with ``MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS`` > 0, the routing temperature is annealed
  (:class:`~condconv_det.engine.hooks.RoutingTemperatureHook`);
- the routers' parameters get ``SOLVER.ROUTER_LR_FACTOR`` and ``SOLVER.WEIGHT_DECAY_ROUTER``.
"""

import logging
import os
import weakref
from typing import Any, Callable, Dict, List, Optional

import torch
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .._compat import (
    OptimizerStateMixin,
    create_ddp_model,
    has_native_coco_eval,
    last_eval_results,
)
from ..checkpoint import CondConvCheckpointer
from ..layers import CondConvRouter
from .hooks import RoutingStartHook, RoutingStatsHook, RoutingTemperatureHook

__all__ = [
    "Trainer",
    "build_coco_evaluator",
    "check_datasets",
    "check_weights",
    "build_optimizer_param_groups",
    "optimizer_param_groups",
    "OPTIMIZERS",
]

# SOLVER.OPTIMIZER: detectron2's SGD, or AdamW (Trainer.build_optimizer).
OPTIMIZERS = ("SGD", "ADAMW")


def build_coco_evaluator(cfg, dataset_name: str, output_dir: str = None) -> COCOEvaluator:
    """Box AP with COCO's protocol; pycocotools' evaluator when the native one is missing."""
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    return COCOEvaluator(
        dataset_name, tasks=("bbox",), output_dir=output_dir, use_fast_impl=has_native_coco_eval()
    )


def check_datasets(names) -> None:
    """Fails early, naming the dataset and the fix, when a dataset is unknown or its files are
    missing.

    detectron2 would otherwise fail at the first data loader iteration, in a worker process,
    with a bare file-not-found error.
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            near = sorted(n for n in registered if n.split("_")[0] == name.split("_")[0])
            raise KeyError(
                f"Dataset {name!r} (in DATASETS.TRAIN / DATASETS.TEST) is not registered. "
                f"Registered datasets like it: {near or sorted(registered)[:20]}. Register it "
                "with detectron2.data.datasets.register_coco_instances before training."
            )
        meta = MetadataCatalog.get(name)
        if meta.get("generated_on_first_use", False):
            continue  # the bundled dataset writes its files when first loaded
        for key in ("json_file", "image_root"):
            path = meta.get(key, None)
            if path is not None and "://" not in path and not os.path.exists(path):
                root = os.getenv("DETECTRON2_DATASETS", "datasets")
                raise FileNotFoundError(
                    f"Dataset {name!r}: {key} {path!r} does not exist. detectron2's builtin "
                    f"datasets live under $DETECTRON2_DATASETS (now {root!r}); point it to the "
                    "folder holding coco/ (docs/getting_started.md, Using COCO), or fix the "
                    "registration."
                )


def check_weights(
    path: str,
    required: bool,
    key: str = "MODEL.WEIGHTS",
    sep: str = " ",
    empty_resume_dir: Optional[str] = None,
) -> None:
    """Fails early when the weights (``MODEL.WEIGHTS``) name a local file that does not exist.

    Args:
        path: the checkpoint path; "" for none.
        required: whether a checkpoint must be given (evaluation only, without a checkpoint to
            resume from).
        key, sep: how the setting is written on the command line, ``key + sep + value``:
            ``MODEL.WEIGHTS path`` (YAML configs) or ``train.init_checkpoint=path`` (LazyConfig).
        empty_resume_dir: the output folder ``--resume`` was asked to use and that holds no
            checkpoint, for the message.
    """
    if not path:
        if required and empty_resume_dir is not None:
            raise ValueError(
                f"--eval-only --resume: the output directory {empty_resume_dir!r} holds no "
                "checkpoint (no last_checkpoint file), so there is nothing to evaluate. Give the "
                f"OUTPUT_DIR of a training run, or {key}{sep}path/to/model.pth."
            )
        if required:
            raise ValueError(
                f"--eval-only needs the weights to evaluate: add {key}{sep}path/to/model.pth "
                "(e.g. model_final.pth in the output directory of a training run), or --resume "
                "to use the last checkpoint of the output directory."
            )
        return
    if "://" not in path and not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"{key} {path!r} does not exist. Give a checkpoint file (.pth, or .pkl from "
            f"tools/convert_pretrained.py), or {key}{sep}'' to start from scratch."
        )


def model_num_classes(model: torch.nn.Module) -> Optional[int]:
    """The number of object classes ``model`` detects (SSD, RetinaNet, R-CNN), or None."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    heads = getattr(model, "roi_heads", None)
    return getattr(heads, "num_classes", None) if heads is not None else None


def check_num_classes(model: torch.nn.Module, dataset_names, key: str) -> None:
    """Fails before any training when a dataset has another number of classes than ``model``.

    A model with too few classes trains the last ones as background or fails mid-training on a
    label out of range; one with too many fails in the evaluator after the whole training.

    Args:
        model: the detector.
        dataset_names: registered datasets (their metadata's ``thing_classes``; datasets that
            set them only when loaded, as COCO-format json ones, are loaded).
        key: the setting that holds the model's class count, for the message.
    """
    expected = model_num_classes(model)
    if expected is None:
        return
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None:
            DatasetCatalog.get(name)  # COCO-format json datasets set thing_classes when loaded
            classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != expected:
            raise ValueError(
                f"{key} is {expected} but dataset {name!r} has {len(classes)} classes "
                f"({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''}). Set "
                f"{key} {len(classes)}, or give datasets with {expected} classes."
            )


def check_images_per_batch_norm(cfg, model: torch.nn.Module) -> None:
    """Fails before training when BatchNorm would see one value per channel: one image per
    process through SSD's last layers (1x1 maps) or a router's norm (one pooled vector)."""
    per_process = cfg.SOLVER.IMS_PER_BATCH // max(comm.get_world_size(), 1)
    if per_process > 1:
        return
    batch_norms = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and (is_ssd(cfg) or ".router" in f".{name}")
    ]
    if batch_norms:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} gives {per_process} image per "
            f"process, and BatchNorm cannot train on one value per channel, as in {batch_norms[0]} "
            "(SSD's last layers are 1x1; a router normalises one pooled vector per image). Give "
            "at least 2 images per process, or another norm (MODEL.SSD.NORM, "
            "MODEL.MOBILENET.NORM: FrozenBN or GN; MODEL.CONDCONV.ROUTER_NORM: LN)."
        )


def num_classes_key(cfg) -> str:
    """The config key of the detector's class count."""
    if is_ssd(cfg):
        return "MODEL.SSD.NUM_CLASSES"
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def is_ssd(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SSD"


class NamedErrorMapper:
    """Wraps a dataset mapper so that a failing record names its image file.

    Without it, a corrupt or missing image surfaces as a bare PIL/IO error raised in a data
    loader worker, with nothing saying which of thousands of files is at fault.
    """

    def __init__(self, mapper: Callable[[Dict[str, Any]], Dict[str, Any]]):
        self.mapper = mapper

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return self.mapper(dataset_dict)
        except Exception as e:
            name = dataset_dict.get("file_name", "<no file_name>")
            if name in str(e):  # the mapper already said which file
                raise
            raise RuntimeError(
                f"Could not load image {name} (image_id {dataset_dict.get('image_id')}): "
                f"{type(e).__name__}: {e}. Fix or remove this image from the dataset."
            ) from e


def build_mapper(cfg, is_train: bool):
    """The dataset mapper of ``cfg``'s meta-architecture, wrapped by :class:`NamedErrorMapper`."""
    if is_ssd(cfg):
        from ..data import SSDDatasetMapper

        mapper = SSDDatasetMapper(cfg, is_train=is_train)
    else:
        mapper = _EightBitDatasetMapper(cfg, is_train=is_train)
    return NamedErrorMapper(mapper)


class _EightBitDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper``, refusing images of more than 8 bits per pixel (its
    reader clips them) by name instead of training on black-and-white images."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        from ..data.images import check_8bit_image

        check_8bit_image(dataset_dict["file_name"], "detectron2's DatasetMapper (R-CNN, RetinaNet)")
        return super().__call__(dataset_dict)


class Trainer(OptimizerStateMixin, DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for condconv_det models (see the module docstring)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is reproduced (not called) because it wraps the model with
        # detectron2's create_ddp_model, which fails for CPU models (see _compat), and to check
        # the class count and batch norms before the data is loaded.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        check_num_classes(model, cfg.DATASETS.TRAIN + cfg.DATASETS.TEST, num_classes_key(cfg))
        check_images_per_batch_norm(cfg, model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(model, cfg, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Runs training; returns the last evaluation's results (detectron2 returns them only
        when ``TEST.EXPECTED_RESULTS`` is set)."""
        results = super().train()
        return results if results is not None else last_eval_results(self)

    def build_hooks(self):
        """detectron2's hooks, plus :class:`RoutingTemperatureHook` when the routing temperature
        is annealed and :class:`RoutingStatsHook` when routing statistics are on."""
        hooks = super().build_hooks()
        schedule = self.cfg.MODEL.CONDCONV.TEMPERATURE_SCHEDULE
        if schedule.ITERS > 0:
            # First: every other hook (evaluation included) sees this iteration's temperature.
            end = self.cfg.MODEL.CONDCONV.ROUTING_TEMPERATURE
            hooks.insert(0, RoutingTemperatureHook(schedule.START, schedule.ITERS, end=end))
        start = self.cfg.MODEL.CONDCONV.ROUTING_START_ITER
        if start > 0:
            hooks.insert(0, RoutingStartHook(start))
        stats = self.cfg.MODEL.CONDCONV.ROUTING_STATS
        if stats.ENABLED:
            # Before any hook that runs the model (its forward hooks must be gone by then) or
            # writes the metrics (its scalars must be in the storage by then).
            later = (
                d2_hooks.PreciseBN,
                d2_hooks.EvalHook,
                d2_hooks.PeriodicCheckpointer,
                d2_hooks.PeriodicWriter,
            )
            index = next((i for i, h in enumerate(hooks) if isinstance(h, later)), len(hooks))
            hooks.insert(index, RoutingStatsHook(stats.PERIOD))
        return hooks

    @classmethod
    def build_optimizer(cls, cfg, model):
        """``SOLVER.OPTIMIZER``: detectron2's SGD, or AdamW (``SOLVER.BETAS``); the routers'
        parameters in groups of their own when ``SOLVER.ROUTER_LR_FACTOR`` or
        ``SOLVER.WEIGHT_DECAY_ROUTER`` asks for it."""
        s = cfg.SOLVER
        if s.OPTIMIZER == "SGD" and s.ROUTER_LR_FACTOR == 1.0 and s.WEIGHT_DECAY_ROUTER is None:
            return super().build_optimizer(cfg, model)
        from detectron2.solver.build import maybe_add_gradient_clipping

        groups = build_optimizer_param_groups(cfg, model)
        if s.OPTIMIZER == "ADAMW":
            optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
            return optimizer_class(groups, lr=s.BASE_LR, betas=tuple(s.BETAS))
        optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_class(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)

    @classmethod
    def build_checkpointer(cls, model, cfg, **checkpointables) -> CondConvCheckpointer:
        """The checkpointer of ``model``, saving to ``cfg.OUTPUT_DIR``."""
        return CondConvCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            match=cfg.MODEL.WEIGHTS_MATCH,
            upcycle_noise=cfg.MODEL.CONDCONV.UPCYCLE_NOISE,
            upcycle_routers=cfg.MODEL.CONDCONV.UPCYCLE_ROUTERS,
            **checkpointables,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader. With the default ``TrainingSampler`` the sampler's seed is
        drawn from the global RNG (that ``SEED`` seeds), as detectron2 0.6 and the LazyConfig
        loader of every version do: detectron2's main branch seeds it with ``SEED`` itself,
        which would give another data order than 0.6 and than ``tools/lazy_train_net.py``."""
        mapper = build_mapper(cfg, is_train=True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_detection_train_loader(cfg, mapper=mapper)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        return build_detection_train_loader(
            dataset,
            mapper=mapper,
            sampler=TrainingSampler(len(dataset)),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        return build_coco_evaluator(cfg, dataset_name, output_folder)


_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


def build_optimizer_param_groups(cfg, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """:func:`optimizer_param_groups` with the settings of ``SOLVER.*``."""
    s = cfg.SOLVER
    return optimizer_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        router_lr_factor=s.ROUTER_LR_FACTOR,
        weight_decay_router=s.WEIGHT_DECAY_ROUTER,
    )


def optimizer_param_groups(
    model: torch.nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    router_lr_factor: float = 1.0,
    weight_decay_router: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups as detectron2's ``get_default_optimizer_params`` makes them (norm and
    bias rules, same arguments), with the CondConv routers' parameters getting
    ``router_lr_factor`` times their learning rate and ``weight_decay_router`` (None: their usual
    decay). Parameters with equal settings share a group. For LazyConfig:
    ``optimizer.params = L(optimizer_param_groups)(base_lr=..., weight_decay=..., ...)``, the
    model set by the training script (``optimizer.params.model``)."""
    from detectron2.layers import FrozenBatchNorm2d

    norm_types = _NORM_TYPES + (FrozenBatchNorm2d,)
    router_params = {
        id(p) for m in model.modules() if isinstance(m, CondConvRouter) for p in m.parameters()
    }
    groups: Dict[Any, Dict[str, Any]] = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if isinstance(module, norm_types):
                decay = weight_decay_norm
            elif name == "bias":
                lr = base_lr * bias_lr_factor
                decay = weight_decay if weight_decay_bias is None else weight_decay_bias
            if id(param) in router_params:
                lr *= router_lr_factor
                if weight_decay_router is not None:
                    decay = weight_decay_router
            group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay})
            group["params"].append(param)
    return list(groups.values())
