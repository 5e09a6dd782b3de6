"""Config keys of condconv_det. ``add_condconv_config(cfg)`` adds them to a detectron2 config.

Defaults equal the constructors' defaults; values are checked when a model is built
(:func:`check_condconv_config`), with a message that names the key.
"""

import os
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import yaml
from detectron2.config import CfgNode as CN
from fvcore.common.config import BASE_KEY

from condconv_det.layers import EXPERT_INITS, ROUTER_INITS, ROUTER_NORMS, ROUTING_ACTIVATIONS

__all__ = [
    "add_condconv_config",
    "check_condconv_config",
    "check_ssd_config",
    "check_ssd_input_config",
    "condconv_options",
    "config_key_sources",
    "get_cfg",
    "load_config",
    "run_on_cpu_without_cuda",
    "CondConvCfgNode",
    "KeySource",
    "MODEL_ZOO_PREFIX",
]


def add_condconv_config(cfg: CN) -> None:
    """Adds ``MODEL.CONDCONV`` and ``MODEL.MOBILENET`` to ``cfg`` (in place)."""
    _C = cfg
    # How a checkpoint named by MODEL.WEIGHTS must fit the model: "strict" (every tensor, nothing
    # else), "pretrained" (all of the checkpoint fits; layers it lacks start as initialised) or
    # "partial" (whatever fits; fine-tuning). Resuming a run always needs an exact fit.
    _C.MODEL.WEIGHTS_MATCH = "strict"
    _C.MODEL.CONDCONV = CN()
    # Experts per CondConv layer. 0 builds the static twin: the same network with plain convs
    # (for ResNet, exactly detectron2's blocks and parameter names).
    _C.MODEL.CONDCONV.NUM_EXPERTS = 8
    # ResNet stages ("res2".."res5") whose blocks use CondConv. The paper's CondConv-ResNet-50
    # overhead (about +120M multiply-adds on 4.1G) matches CondConv in res5.
    _C.MODEL.CONDCONV.RESNET_STAGES = ["res5"]
    # "block": one router per block feeds all its CondConvs (official code); "layer": each
    # CondConv has its own router.
    _C.MODEL.CONDCONV.ROUTING = "block"
    # "sigmoid" (the paper) or "softmax" (Dynamic Convolution, Chen et al. 2020).
    _C.MODEL.CONDCONV.ROUTING_ACTIVATION = "sigmoid"
    # Routing temperature: the router's logits are divided by it before the activation, for
    # "sigmoid" and "softmax" alike. The value a trained model routes with; during training it
    # can be annealed towards it (TEMPERATURE_SCHEDULE).
    _C.MODEL.CONDCONV.ROUTING_TEMPERATURE = 1.0
    # Temperature annealing during training (condconv_det.engine.RoutingTemperatureHook): linear
    # from START at iteration 0 to ROUTING_TEMPERATURE at iteration ITERS - 1, then constant. A
    # function of the iteration, so --resume continues it exactly. ITERS 0: no annealing.
    # Dynamic Convolution (Chen et al. 2020) and ODConv anneal from 30 over the first 10 epochs.
    _C.MODEL.CONDCONV.TEMPERATURE_SCHEDULE = CN()
    _C.MODEL.CONDCONV.TEMPERATURE_SCHEDULE.START = 1.0
    _C.MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS = 0
    # A static kernel beside the experts: every example's kernel is W0 + sum_i r_i W_i with the
    # experts starting at zero, so the model starts as its static twin (docs/training.md).
    _C.MODEL.CONDCONV.STATIC_KERNEL = False
    # Router design: hidden units per pooled input channel (0: the paper's single linear layer;
    # Dynamic Convolution uses 0.25) and a norm inside the router ("", "BN" as ODConv, "LN").
    _C.MODEL.CONDCONV.ROUTER_HIDDEN_RATIO = 0.0
    _C.MODEL.CONDCONV.ROUTER_NORM = ""
    # DropExpert: probability of dropping each routing weight during training (others rescaled).
    _C.MODEL.CONDCONV.EXPERT_DROPOUT = 0.0
    # Stop the gradient of the routing at the router's input: routers and experts learn, but the
    # routing sends no gradient back into the features it pools.
    _C.MODEL.CONDCONV.ROUTER_DETACH_INPUT = False
    # Scale every example's mixed kernel to unit norm per output channel: routing moves the
    # kernel's direction, not its gain (which batch norm over the batch cannot normalise).
    _C.MODEL.CONDCONV.KERNEL_NORM = False
    # "independent": each expert initialised as a plain conv (official code, timm);
    # "mixed_variance": experts scaled so the mixed kernel at the start has a plain kernel's
    # variance.
    _C.MODEL.CONDCONV.EXPERT_INIT = "independent"
    # Routers held at their initial routing (gradients zeroed) until this iteration. With
    # EXPERT_INIT "shared" the network trains as its static twin until then and is upcycled in
    # place (docs/training.md). 0: routing learns from the start.
    _C.MODEL.CONDCONV.ROUTING_START_ITER = 0
    # Dropout on the pooled routing input, in [0, 1).
    _C.MODEL.CONDCONV.ROUTING_DROPOUT = 0.0
    # Initial router weights: "glorot" (the official code's) or "zeros" (every example starts
    # with the same routing: the model starts as its static twin). "zeros" is what trains
    # CondConv from scratch in stacks without residuals, e.g. MobileNetV1 (docs/training.md).
    _C.MODEL.CONDCONV.ROUTER_INIT = "glorot"
    # Routing statistics logged during training (condconv_det.engine.hooks.RoutingStatsHook):
    # per router, the entropy of the routing and each expert's mean weight, in metrics.json and
    # TensorBoard as routing/<layer>/entropy and routing/<layer>/expert<i>.
    _C.MODEL.CONDCONV.ROUTING_STATS = CN()
    # Off: no hook is registered and the routers run unobserved.
    _C.MODEL.CONDCONV.ROUTING_STATS.ENABLED = False
    # Log every PERIOD iterations (>= 1), from that iteration's batch; a multiple of the writers'
    # period (20) so that every logged value is written.
    _C.MODEL.CONDCONV.ROUTING_STATS.PERIOD = 20

    _C.MODEL.MOBILENET = CN()
    # Architecture table: "mobilenet_v1", "mobilenet_v2", "efficientnet_b0", "efficientnet_b1" (see
    # condconv_det.modeling.backbone.mobilenet.ARCHS).
    _C.MODEL.MOBILENET.ARCH = "mobilenet_v2"
    # Width multiplier on every layer's channels (rounded to multiples of 8).
    _C.MODEL.MOBILENET.WIDTH_MULT = 1.0
    # Indices (0-based) of the table rows whose blocks use CondConv; empty: the table's own
    # placement (the paper's: the last stages).
    _C.MODEL.MOBILENET.CONDCONV_STAGES = []
    # Features to output: "stem" (stride 2), "res2".."res5" (strides 4..32), "head" (the final
    # 1x1 conv, stride 32). Named like ResNet's, so detectron2's FPN / RetinaNet configs apply.
    _C.MODEL.MOBILENET.OUT_FEATURES = ["res3", "res4", "res5"]
    # Normalization, any of detectron2's get_norm names ("BN", "SyncBN", "FrozenBN", "GN", ...).
    _C.MODEL.MOBILENET.NORM = "BN"
    # Stochastic depth: drop-path rate of the last residual block, growing linearly from 0.
    _C.MODEL.MOBILENET.DROP_PATH_RATE = 0.0
    # Multiplier on every table row's number of blocks, rounded up (EfficientNet compound
    # scaling; efficientnet_b0 with 1.1 is "efficientnet_b1").
    _C.MODEL.MOBILENET.DEPTH_MULT = 1.0
    # Epsilon of every norm layer; None keeps the table's (EfficientNet: TensorFlow's 1e-3).
    # Weights converted from timm's own (not tf_) EfficientNet-CondConv checkpoints need 1e-5.
    _C.MODEL.MOBILENET.BN_EPS = None
    # "symmetric" (kernel // 2, PyTorch's) or "tf_same" (TensorFlow's "SAME": stride-2 convs pad
    # at run time, more on the bottom/right), for weights trained in TensorFlow, e.g. timm's
    # tf_efficientnet_cc_*.
    _C.MODEL.MOBILENET.PADDING = "symmetric"

    # Learning-rate factor and weight decay of the CondConv routers' parameters (optimizer
    # parameter groups); None: SOLVER.WEIGHT_DECAY.
    _C.SOLVER.ROUTER_LR_FACTOR = 1.0
    _C.SOLVER.WEIGHT_DECAY_ROUTER = None
    # "SGD" (detectron2's, with SOLVER.MOMENTUM / NESTEROV) or "ADAMW" (decoupled weight decay
    # SOLVER.WEIGHT_DECAY, betas SOLVER.BETAS).
    _C.SOLVER.OPTIMIZER = "SGD"
    _C.SOLVER.BETAS = (0.9, 0.999)

    # A COCO-format dataset given by its files (docs/own_data.md): a split's instances JSON and
    # the folder of its images, both or neither. The tools check and register a given split
    # under a name derived from its files and train (TRAIN) or evaluate (TEST) on it in place of
    # DATASETS.TRAIN / DATASETS.TEST; the class count follows the training JSON's categories
    # unless it is set next to the paths. "": not given.
    _C.DATASETS.COCO_JSON = CN()
    _C.DATASETS.COCO_JSON.TRAIN = ""
    _C.DATASETS.COCO_JSON.TRAIN_IMAGES = ""
    _C.DATASETS.COCO_JSON.TEST = ""
    _C.DATASETS.COCO_JSON.TEST_IMAGES = ""

    _add_ssd_input_config(cfg)
    _add_ssd_config(cfg)


def check_condconv_config(cfg: CN) -> None:
    """Raises ValueError naming the key when a condconv_det config value is out of range."""
    # The allowed values live beside the code that uses them (imported here, in the function:
    # the modeling modules import this one).
    from condconv_det.modeling.backbone.mobilenet import PADDING_MODES
    from condconv_det.modeling.backbone.resnet import RESNET_STAGE_NAMES
    from condconv_det.modeling.conv import ROUTING_SCOPES

    c = cfg.MODEL.CONDCONV
    _require(c.NUM_EXPERTS >= 0, "MODEL.CONDCONV.NUM_EXPERTS", c.NUM_EXPERTS, "must be >= 0")
    _require(
        all(s in RESNET_STAGE_NAMES for s in c.RESNET_STAGES),
        "MODEL.CONDCONV.RESNET_STAGES",
        c.RESNET_STAGES,
        f"must list stages among {RESNET_STAGE_NAMES}",
    )
    _require(
        c.ROUTING in ROUTING_SCOPES,
        "MODEL.CONDCONV.ROUTING",
        c.ROUTING,
        f"must be one of {ROUTING_SCOPES}",
    )
    _require(
        c.ROUTING_ACTIVATION in ROUTING_ACTIVATIONS,
        "MODEL.CONDCONV.ROUTING_ACTIVATION",
        c.ROUTING_ACTIVATION,
        f"must be one of {ROUTING_ACTIVATIONS}",
    )
    _require(
        c.ROUTING_TEMPERATURE > 0,
        "MODEL.CONDCONV.ROUTING_TEMPERATURE",
        c.ROUTING_TEMPERATURE,
        "must be > 0",
    )
    t = c.TEMPERATURE_SCHEDULE
    _require(t.START > 0, "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.START", t.START, "must be > 0")
    _require(
        t.ITERS >= 0,
        "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS",
        t.ITERS,
        "must be >= 0 (0: no annealing)",
    )
    _require(
        t.ITERS <= cfg.SOLVER.MAX_ITER,
        "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS",
        t.ITERS,
        f"must be <= SOLVER.MAX_ITER ({cfg.SOLVER.MAX_ITER}): a model saved before the end of the "
        "annealing would be evaluated at another temperature than it was trained with",
    )
    _require(
        c.ROUTER_HIDDEN_RATIO >= 0,
        "MODEL.CONDCONV.ROUTER_HIDDEN_RATIO",
        c.ROUTER_HIDDEN_RATIO,
        "must be >= 0",
    )
    _require(
        c.ROUTER_NORM in ROUTER_NORMS,
        "MODEL.CONDCONV.ROUTER_NORM",
        c.ROUTER_NORM,
        f"must be one of {ROUTER_NORMS}",
    )
    _require(
        0.0 <= c.EXPERT_DROPOUT < 1.0,
        "MODEL.CONDCONV.EXPERT_DROPOUT",
        c.EXPERT_DROPOUT,
        "must be in [0, 1)",
    )
    _require(
        c.EXPERT_INIT in EXPERT_INITS,
        "MODEL.CONDCONV.EXPERT_INIT",
        c.EXPERT_INIT,
        f"must be one of {EXPERT_INITS}",
    )
    _require(
        0 <= c.ROUTING_START_ITER < max(cfg.SOLVER.MAX_ITER, 1),
        "MODEL.CONDCONV.ROUTING_START_ITER",
        c.ROUTING_START_ITER,
        f"must be in [0, SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER})",
    )
    _require(
        cfg.SOLVER.ROUTER_LR_FACTOR >= 0,
        "SOLVER.ROUTER_LR_FACTOR",
        cfg.SOLVER.ROUTER_LR_FACTOR,
        "must be >= 0",
    )
    _require(
        cfg.SOLVER.OPTIMIZER in OPTIMIZERS,
        "SOLVER.OPTIMIZER",
        cfg.SOLVER.OPTIMIZER,
        f"must be one of {OPTIMIZERS}",
    )
    betas = cfg.SOLVER.BETAS
    _require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        "SOLVER.BETAS",
        betas,
        "must be two values in [0, 1)",
    )
    wd = cfg.SOLVER.WEIGHT_DECAY_ROUTER
    _require(
        wd is None or wd >= 0,
        "SOLVER.WEIGHT_DECAY_ROUTER",
        wd,
        "must be >= 0, or None for SOLVER.WEIGHT_DECAY",
    )
    _require(
        0.0 <= c.ROUTING_DROPOUT < 1.0,
        "MODEL.CONDCONV.ROUTING_DROPOUT",
        c.ROUTING_DROPOUT,
        "must be in [0, 1)",
    )
    _require(
        c.ROUTER_INIT in ROUTER_INITS,
        "MODEL.CONDCONV.ROUTER_INIT",
        c.ROUTER_INIT,
        f"must be one of {ROUTER_INITS}",
    )
    _require(
        c.ROUTING_STATS.PERIOD >= 1,
        "MODEL.CONDCONV.ROUTING_STATS.PERIOD",
        c.ROUTING_STATS.PERIOD,
        "must be >= 1",
    )
    m = cfg.MODEL.MOBILENET
    _require(m.WIDTH_MULT > 0, "MODEL.MOBILENET.WIDTH_MULT", m.WIDTH_MULT, "must be > 0")
    _require(
        0.0 <= m.DROP_PATH_RATE < 1.0,
        "MODEL.MOBILENET.DROP_PATH_RATE",
        m.DROP_PATH_RATE,
        "must be in [0, 1)",
    )
    _require(m.DEPTH_MULT > 0, "MODEL.MOBILENET.DEPTH_MULT", m.DEPTH_MULT, "must be > 0")
    _require(
        m.BN_EPS is None or m.BN_EPS > 0,
        "MODEL.MOBILENET.BN_EPS",
        m.BN_EPS,
        "must be > 0, or None for the table's",
    )
    _require(
        m.PADDING in PADDING_MODES,
        "MODEL.MOBILENET.PADDING",
        m.PADDING,
        f"must be one of {PADDING_MODES}",
    )


def condconv_options(cfg: CN) -> Dict[str, Any]:
    """Keyword arguments of :func:`condconv_det.layers.configure_condconv` from
    ``MODEL.CONDCONV``: what the backbone and head builders apply once a model is built."""
    c = cfg.MODEL.CONDCONV
    return dict(
        static_kernel=bool(c.STATIC_KERNEL),
        router_hidden_ratio=float(c.ROUTER_HIDDEN_RATIO),
        router_norm=c.ROUTER_NORM,
        expert_dropout=float(c.EXPERT_DROPOUT),
        router_detach_input=bool(c.ROUTER_DETACH_INPUT),
        normalize_kernel=bool(c.KERNEL_NORM),
        expert_init=c.EXPERT_INIT,
        router_init=c.ROUTER_INIT,
    )


def _add_ssd_config(cfg: CN) -> None:
    """Adds ``MODEL.SSD``: the SSD detector (condconv_det.modeling.meta_arch.SSD) and its
    extra-layers backbone (condconv_det.modeling.backbone.SSDBackbone)."""
    _C = cfg
    _C.MODEL.SSD = CN()
    # Object classes; background gets index NUM_CLASSES (detectron2's convention).
    _C.MODEL.SSD.NUM_CLASSES = 80
    # Bottom-up features the SSD backbone passes on, by increasing stride; the extra layers grow
    # from the last one. SSD300-MobileNetV1: res4 (19x19) and res5 (10x10).
    _C.MODEL.SSD.IN_FEATURES = ["res4", "res5"]
    # Output channels of the extra layers (1x1 conv to half the channels, then a 3x3 stride-2
    # conv), one new feature each, named by stride ("p6", "p7", ...). TF object-detection API's.
    _C.MODEL.SSD.EXTRA_CHANNELS = [512, 256, 256, 128]
    # SSDLite extra layers: the 3x3 conv becomes depthwise 3x3 + pointwise 1x1.
    _C.MODEL.SSD.EXTRA_DEPTHWISE = False
    # CondConv experts in every extra-layer conv, each with its own router; 0: static convs.
    _C.MODEL.SSD.EXTRA_NUM_EXPERTS = 0
    # Norm of the extra layers and of the depthwise head convs (get_norm names, "" for none).
    _C.MODEL.SSD.NORM = "BN"
    # SSDLite predictors: depthwise 3x3 + norm + ReLU6 + 1x1 instead of one 3x3 conv per level.
    _C.MODEL.SSD.HEAD_DEPTHWISE = False
    # CondConv experts in every predictor conv, each with its own router; 0: static convs.
    _C.MODEL.SSD.HEAD_NUM_EXPERTS = 0
    # Default-box scale of the first level, as a fraction of the image side (SSD paper, eq. 4).
    _C.MODEL.SSD.MIN_SCALE = 0.2
    # Default-box scale of the last level; scales are linear in between.
    _C.MODEL.SSD.MAX_SCALE = 0.95
    # Aspect ratios r per level: boxes r:1 and 1:r join the two 1:1 boxes at each location. A
    # single list applies to every level (the TF API's 6 boxes per location).
    _C.MODEL.SSD.ASPECT_RATIOS = [[2.0, 3.0]]
    # Clip the default boxes to the image.
    _C.MODEL.SSD.CLIP_DEFAULT_BOXES = True
    # Default boxes with IoU >= this with a ground-truth box are positives (besides each ground
    # truth's best default box, always matched).
    _C.MODEL.SSD.IOU_THRESHOLD = 0.5
    # Hard-negative mining: negatives kept per positive (the highest-loss ones).
    _C.MODEL.SSD.NEG_POS_RATIO = 3.0
    # Hard-negative mining: negatives kept at least, per image, so that images without objects
    # still train the background class.
    _C.MODEL.SSD.MIN_NEGATIVES_PER_IMAGE = 3
    # Box encoding weights (wx, wy, ww, wh); (10, 10, 5, 5) are SSD's variances (0.1, 0.1, 0.2,
    # 0.2).
    _C.MODEL.SSD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Box regression loss: "smooth_l1" (the paper's), "giou", "diou" or "ciou".
    _C.MODEL.SSD.BBOX_REG_LOSS_TYPE = "smooth_l1"
    # Beta of the smooth-L1 loss; 0 gives L1.
    _C.MODEL.SSD.SMOOTH_L1_BETA = 1.0
    # Inference: class scores (softmax) at or below this are dropped.
    _C.MODEL.SSD.SCORE_THRESH_TEST = 0.01
    # Inference: highest-scoring default boxes kept per class before NMS.
    _C.MODEL.SSD.TOPK_CANDIDATES_TEST = 400
    # Inference: IoU threshold of the per-class NMS. (Detections kept per image:
    # TEST.DETECTIONS_PER_IMAGE, as detectron2's RetinaNet.)
    _C.MODEL.SSD.NMS_THRESH_TEST = 0.45


def check_ssd_config(cfg: CN) -> None:
    """Raises ValueError naming the key when a ``MODEL.SSD`` value is out of range."""
    c = cfg.MODEL.SSD
    _require(c.NUM_CLASSES >= 1, "MODEL.SSD.NUM_CLASSES", c.NUM_CLASSES, "must be >= 1")
    _require(len(c.IN_FEATURES) >= 1, "MODEL.SSD.IN_FEATURES", c.IN_FEATURES, "must not be empty")
    _require(
        all(ch >= 2 for ch in c.EXTRA_CHANNELS),
        "MODEL.SSD.EXTRA_CHANNELS",
        c.EXTRA_CHANNELS,
        "must hold channels >= 2 (the 1x1 conv halves them)",
    )
    for key in ("EXTRA_NUM_EXPERTS", "HEAD_NUM_EXPERTS"):
        _require(c[key] >= 0, f"MODEL.SSD.{key}", c[key], "must be >= 0")
    _require(
        0 < c.MIN_SCALE <= c.MAX_SCALE,
        "MODEL.SSD.MIN_SCALE",
        (c.MIN_SCALE, c.MAX_SCALE),
        "must satisfy 0 < MIN_SCALE <= MAX_SCALE (MIN_SCALE, MAX_SCALE)",
    )
    _require(
        len(c.ASPECT_RATIOS) >= 1
        and all(isinstance(r, (list, tuple)) and all(a > 0 for a in r) for r in c.ASPECT_RATIOS),
        "MODEL.SSD.ASPECT_RATIOS",
        c.ASPECT_RATIOS,
        "must be a non-empty list of lists of positive ratios (one list per level, or one for all)",
    )
    _require(
        0 < c.IOU_THRESHOLD <= 1, "MODEL.SSD.IOU_THRESHOLD", c.IOU_THRESHOLD, "must be in (0, 1]"
    )
    _require(c.NEG_POS_RATIO >= 0, "MODEL.SSD.NEG_POS_RATIO", c.NEG_POS_RATIO, "must be >= 0")
    _require(
        c.MIN_NEGATIVES_PER_IMAGE >= 0,
        "MODEL.SSD.MIN_NEGATIVES_PER_IMAGE",
        c.MIN_NEGATIVES_PER_IMAGE,
        "must be >= 0",
    )
    _require(
        len(c.BBOX_REG_WEIGHTS) == 4 and all(w > 0 for w in c.BBOX_REG_WEIGHTS),
        "MODEL.SSD.BBOX_REG_WEIGHTS",
        c.BBOX_REG_WEIGHTS,
        "must be 4 positive weights (wx, wy, ww, wh)",
    )
    from condconv_det.modeling.meta_arch.ssd import BOX_REG_LOSSES

    _require(
        c.BBOX_REG_LOSS_TYPE in BOX_REG_LOSSES,
        "MODEL.SSD.BBOX_REG_LOSS_TYPE",
        c.BBOX_REG_LOSS_TYPE,
        f"must be one of {BOX_REG_LOSSES}",
    )
    _require(c.SMOOTH_L1_BETA >= 0, "MODEL.SSD.SMOOTH_L1_BETA", c.SMOOTH_L1_BETA, "must be >= 0")
    _require(
        0 <= c.SCORE_THRESH_TEST < 1,
        "MODEL.SSD.SCORE_THRESH_TEST",
        c.SCORE_THRESH_TEST,
        "must be in [0, 1)",
    )
    _require(
        c.TOPK_CANDIDATES_TEST >= 1,
        "MODEL.SSD.TOPK_CANDIDATES_TEST",
        c.TOPK_CANDIDATES_TEST,
        "must be >= 1",
    )
    _require(
        0 < c.NMS_THRESH_TEST <= 1,
        "MODEL.SSD.NMS_THRESH_TEST",
        c.NMS_THRESH_TEST,
        "must be in (0, 1]",
    )


def _add_ssd_input_config(cfg: CN) -> None:
    """Adds ``INPUT.SSD``: SSD's data augmentation (condconv_det.data.build_ssd_augmentation)."""
    _C = cfg
    _C.INPUT.SSD = CN()
    # Side of the square every image is resized to (not aspect-preserving): 300 for SSD300, 320
    # for SSDlite / FPN variants (320 is divisible by 32).
    _C.INPUT.SSD.SIZE = 300
    # Photometric distortion (training): brightness, contrast, saturation, hue, each with
    # probability 0.5; needs INPUT.FORMAT "RGB" or "BGR".
    _C.INPUT.SSD.PHOTOMETRIC = True
    # Brightness shift drawn from [-delta, delta], on the 0-255 scale.
    _C.INPUT.SSD.BRIGHTNESS_DELTA = 32.0
    # Contrast factor (pixel values are multiplied by it) drawn from [low, high].
    _C.INPUT.SSD.CONTRAST_RANGE = (0.5, 1.5)
    # HSV saturation factor drawn from [low, high].
    _C.INPUT.SSD.SATURATION_RANGE = (0.5, 1.5)
    # Hue rotation in degrees drawn from [-delta, delta].
    _C.INPUT.SSD.HUE_DELTA = 18.0
    # Zoom out (training): the image on a larger canvas filled with MODEL.PIXEL_MEAN.
    _C.INPUT.SSD.EXPAND = True
    # Largest canvas-to-image side ratio (>= 1); the ratio is drawn from [1, max].
    _C.INPUT.SSD.EXPAND_MAX_RATIO = 4.0
    # Probability of zooming out.
    _C.INPUT.SSD.EXPAND_PROB = 0.5
    # SSD's random crop (training): a crop overlapping some object by a minimum IoU.
    _C.INPUT.SSD.MIN_IOU_CROP = True
    # Minimum-IoU modes, drawn uniformly together with "no crop"; 0.0 is "any crop" (only a box
    # centre must lie in it).
    _C.INPUT.SSD.CROP_MIN_IOUS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]
    # Smallest crop side, as a fraction of the image side, in (0, 1].
    _C.INPUT.SSD.CROP_MIN_SCALE = 0.3
    # Bounds of the crop's aspect ratio (width / height).
    _C.INPUT.SSD.CROP_ASPECT_RANGE = (0.5, 2.0)
    # Crops sampled before giving up (then the image is not cropped).
    _C.INPUT.SSD.CROP_TRIALS = 50
    # Horizontal flip with probability 0.5 (training).
    _C.INPUT.SSD.FLIP = True


def check_ssd_input_config(cfg: CN) -> None:
    """Raises ValueError naming the key when an ``INPUT.SSD`` value is out of range."""
    c = cfg.INPUT.SSD
    _require(c.SIZE > 0, "INPUT.SSD.SIZE", c.SIZE, "must be > 0")
    _require(
        not c.PHOTOMETRIC or cfg.INPUT.FORMAT in ("RGB", "BGR"),
        "INPUT.FORMAT",
        cfg.INPUT.FORMAT,
        "must be 'RGB' or 'BGR' with INPUT.SSD.PHOTOMETRIC",
    )
    _require(
        0 <= c.BRIGHTNESS_DELTA <= 255,
        "INPUT.SSD.BRIGHTNESS_DELTA",
        c.BRIGHTNESS_DELTA,
        "must be in [0, 255]",
    )
    for key in ("CONTRAST_RANGE", "SATURATION_RANGE"):
        r = c[key]
        _require(
            len(r) == 2 and 0 <= r[0] <= r[1],
            f"INPUT.SSD.{key}",
            r,
            "must be (low, high) with 0 <= low <= high",
        )
    _require(0 <= c.HUE_DELTA <= 180, "INPUT.SSD.HUE_DELTA", c.HUE_DELTA, "must be in [0, 180]")
    _require(
        c.EXPAND_MAX_RATIO >= 1, "INPUT.SSD.EXPAND_MAX_RATIO", c.EXPAND_MAX_RATIO, "must be >= 1"
    )
    _require(0 <= c.EXPAND_PROB <= 1, "INPUT.SSD.EXPAND_PROB", c.EXPAND_PROB, "must be in [0, 1]")
    _require(
        all(0 <= m <= 1 for m in c.CROP_MIN_IOUS),
        "INPUT.SSD.CROP_MIN_IOUS",
        c.CROP_MIN_IOUS,
        "must hold values in [0, 1]",
    )
    _require(
        0 < c.CROP_MIN_SCALE <= 1, "INPUT.SSD.CROP_MIN_SCALE", c.CROP_MIN_SCALE, "must be in (0, 1]"
    )
    r = c.CROP_ASPECT_RANGE
    _require(
        len(r) == 2 and 0 < r[0] <= r[1],
        "INPUT.SSD.CROP_ASPECT_RANGE",
        r,
        "must be (low, high) with 0 < low <= high",
    )
    _require(c.CROP_TRIALS >= 1, "INPUT.SSD.CROP_TRIALS", c.CROP_TRIALS, "must be >= 1")


def _require(ok: bool, key: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{key} {what}, got {value!r}")


OPTIMIZERS = ("SGD", "ADAMW")

# ``_BASE_: "model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"`` inherits a config of the
# installed detectron2 model zoo, so a config can change only what differs (e.g. the backbone).
MODEL_ZOO_PREFIX = "model_zoo://"


class CondConvCfgNode(CN):
    """detectron2's ``CfgNode`` whose ``_BASE_`` may also name a model-zoo config.

    Only the root node is of this class: children stay detectron2 ``CfgNode``s, so keys that other
    projects add later with ``CfgNode()`` still merge (yacs requires equal node types).
    """

    @classmethod
    def _create_config_tree_from_dict(cls, dic, key_list):
        return CN._create_config_tree_from_dict(dic, key_list)

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        with cls._open_cfg(filename) as f:
            text = f.read()
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.constructor.ConstructorError:  # e.g. !!python/object/apply:eval, as fvcore
            if not allow_unsafe:
                raise
            loaded = yaml.unsafe_load(text) or {}
        base = loaded.get("_BASE_")
        if not (isinstance(base, str) and base.startswith(MODEL_ZOO_PREFIX)):
            return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        base_cfg = cls.load_yaml_with_base(model_zoo_config_path(base), allow_unsafe=allow_unsafe)
        del loaded["_BASE_"]
        _merge_dict(loaded, base_cfg)
        return base_cfg


class KeySource(NamedTuple):
    """Where a config key got its value (:func:`config_key_sources`)."""

    rank: int  # merge order: the deepest _BASE_ file 0, ..., the config file, the command line
    where: str  # the file, or "the command line"


def config_key_sources(config_file: str, opts: Sequence[str] = ()) -> Dict[str, KeySource]:
    """Where each key set by a YAML config file (its ``_BASE_`` files included) or by command
    line overrides was set last, as ``merge_from_file`` then ``merge_from_list`` merge them.

    Args:
        config_file: the file given to ``--config-file``.
        opts: the ``KEY VALUE`` overrides.

    Returns:
        ``{"MODEL.SSD.NUM_CLASSES": KeySource(rank, where), ...}``; keys that keep their default
        are absent.
    """
    order = _merge_order(config_file)
    sources: Dict[str, KeySource] = {}
    for rank, (filename, loaded) in enumerate(order):
        for key in _flat_keys(loaded):
            sources[key] = KeySource(rank, filename)
    for key in opts[0::2]:
        sources[key] = KeySource(len(order), "the command line")
    return sources


def _merge_order(filename: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file, its own keys)`` of ``filename`` and its ``_BASE_`` files (one, or a list, as
    fvcore allows), in the order fvcore merges them: bases first."""
    with CondConvCfgNode._open_cfg(filename) as f:
        text = f.read()
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError:  # unsafe tags, which merge_from_file allows
        loaded = yaml.unsafe_load(text) or {}
    bases = loaded.pop(BASE_KEY, None)
    order = []
    for base in [] if bases is None else bases if isinstance(bases, list) else [bases]:
        order += _merge_order(_base_path(filename, base))
    return order + [(filename, loaded)]


def _base_path(filename: str, base: str) -> str:
    """The file that ``_BASE_: base`` in ``filename`` names, resolved as fvcore does."""
    if base.startswith(MODEL_ZOO_PREFIX):
        return model_zoo_config_path(base)
    base = os.path.expanduser(base)
    if not base.startswith(("/", "https://", "http://")):
        base = os.path.normpath(os.path.join(os.path.dirname(filename), base))
    return base


def _flat_keys(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def model_zoo_config_path(name: str) -> str:
    """The file of ``model_zoo://<path>`` in the installed detectron2 model zoo."""
    from detectron2 import model_zoo

    path = name[len(MODEL_ZOO_PREFIX) :] if name.startswith(MODEL_ZOO_PREFIX) else name
    try:
        return model_zoo.get_config_file(path)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"_BASE_ {name!r}: {path!r} is not a config of the installed detectron2 model zoo "
            "(detectron2/model_zoo/configs); check the spelling, or reinstall detectron2 with its "
            "model-zoo configs (see docs/install.md)."
        ) from e


def _merge_dict(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Merges ``a`` into ``b`` in place, ``a`` winning, like fvcore's ``_BASE_`` merge."""
    for key, value in a.items():
        if isinstance(value, dict) and isinstance(b.get(key), dict):
            _merge_dict(value, b[key])
        else:
            b[key] = value


def get_cfg() -> CN:
    """detectron2's default config with condconv_det's keys, able to load model-zoo bases."""
    from detectron2.config import get_cfg as d2_get_cfg

    cfg = CondConvCfgNode(d2_get_cfg())
    add_condconv_config(cfg)
    return cfg


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """A tool's config: :func:`get_cfg` with ``config_file`` and the ``KEY VALUE`` overrides
    ``opts`` merged, not frozen.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ValueError: ``opts`` are not KEY VALUE pairs of existing keys (naming them).
    """
    if not config_file:
        raise FileNotFoundError(
            "a config file is required (e.g. configs/shapes/ssd_condconv_MNv1.yaml)"
        )
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:  # yacs' errors name the key, or nothing
        raise ValueError(
            f"bad config overrides {list(opts)}: {e or 'odd number of items'}. Give KEY VALUE "
            "pairs of existing keys, after all --options."
        ) from e
    return cfg


def run_on_cpu_without_cuda(cfg: CN) -> bool:
    """Sets ``MODEL.DEVICE`` to the CPU when it asks for CUDA and there is none (rather than a
    crash when the model is built); returns whether it did, for the tool to say so."""
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False
