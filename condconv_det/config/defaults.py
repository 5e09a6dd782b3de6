"""condconv_det's config keys, one comment each: :func:`add_condconv_config` adds them to a
detectron2 config. Their defaults equal the constructors' defaults.
"""

from typing import Any, Dict

from detectron2.config import CfgNode as CN

__all__ = ["add_condconv_config", "condconv_options"]


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
    # When MODEL.WEIGHTS upcycles a static checkpoint: the std of the zero-sum perturbation that
    # sets the experts apart, relative to each kernel's std. The upcycled model computes what
    # the static one did whatever its size; it decides how fast the routing can tell the
    # experts apart (docs/training.md).
    _C.MODEL.CONDCONV.UPCYCLE_NOISE = 0.01
    # When MODEL.WEIGHTS upcycles a static checkpoint: where the routers start. "uniform": zero
    # weights, the same routing for every input (with sigmoid routing at 1/sqrt(E)). "init":
    # they keep their initialisation (ROUTER_INIT), so routing differs per image from the first
    # step and each expert learns from the images routed to it (as sparse upcycling does); the
    # upcycled model still computes the static one, since the experts' shares sum to one, so it
    # needs softmax routing (or STATIC_KERNEL, whose routers always keep their initialisation).
    _C.MODEL.CONDCONV.UPCYCLE_ROUTERS = "uniform"
    # The main job (tools/compare_twins.py, whose --from-static overrides it): how many
    # iterations the static model that both twins start from is trained, from scratch, before
    # the static twin continues it and the CondConv twin is upcycled from it; both then train
    # SOLVER.MAX_ITER iterations. None: as long as SOLVER.MAX_ITER; 0: both twins from scratch.
    # tools/train_net.py does not read it (a run starts from MODEL.WEIGHTS).
    _C.MODEL.CONDCONV.UPCYCLE_FROM_ITERS = None
    # Dropout on the pooled routing input, in [0, 1).
    _C.MODEL.CONDCONV.ROUTING_DROPOUT = 0.0
    # Initial router weights: "glorot" (the official code's) or "zeros" (every example starts
    # with the same routing: the model starts as its static twin). "zeros" is what trains
    # CondConv from scratch in stacks without residuals, e.g. MobileNetV1 (docs/training.md).
    _C.MODEL.CONDCONV.ROUTER_INIT = "glorot"
    # Inference only: the dtype the experts (and static kernels) are stored in once a model is
    # built for evaluation, the demo or export: "float32", "bfloat16" for half the bytes to
    # read at batch 1, or "int8" (one scale per output channel) for a quarter (kernels still
    # mixed in float32; docs/performance.md). Training: float32.
    _C.MODEL.CONDCONV.EXPERT_DTYPE = "float32"
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
