"""Range checks of condconv_det's config values, raising ``ValueError`` with a message that
names the key and what it must be.

Each registered builder runs the checks that cover the keys it reads (:func:`check_config`), so
a backbone built alone with ``build_backbone(cfg)`` is checked too. A builder that calls others
(the SSD meta-architecture its backbone, an SSD backbone its bottom-up) checks once for all of
them (:func:`checked_config`), and the builders it calls skip what it checked: every value is
checked once per model build.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, FrozenSet, Iterator, Optional, Tuple

from detectron2.config import CfgNode as CN

from condconv_det.checkpoint.upcycle import UPCYCLE_ROUTERS
from condconv_det.layers import (
    EXPERT_DTYPES,
    EXPERT_INITS,
    ROUTER_INITS,
    ROUTER_NORMS,
    ROUTING_ACTIVATIONS,
)

__all__ = [
    "check_condconv_config",
    "check_config",
    "check_ssd_config",
    "check_ssd_input_config",
    "checked_config",
]

ConfigCheck = Callable[[CN], None]

# The config that the enclosing builders checked and the checks they ran on it.
_CHECKED: ContextVar[Tuple[Optional[CN], FrozenSet[ConfigCheck]]] = ContextVar(
    "condconv_det_checked_config", default=(None, frozenset())
)


def check_config(cfg: CN, *checks: ConfigCheck) -> None:
    """Runs each of ``checks`` on ``cfg`` unless an enclosing :func:`checked_config` block has
    already run it on this ``cfg``.

    Args:
        cfg: the config a builder reads.
        checks: functions raising ``ValueError`` for bad values, e.g.
            :func:`check_condconv_config`.
    """
    checked_cfg, done = _CHECKED.get()
    for check in checks:
        if checked_cfg is not cfg or check not in done:
            check(cfg)


@contextmanager
def checked_config(cfg: CN, *checks: ConfigCheck) -> Iterator[None]:
    """:func:`check_config`, and inside the ``with`` block the builders called on the same
    ``cfg`` skip these checks (a builder called with another config still runs them)."""
    check_config(cfg, *checks)
    checked_cfg, done = _CHECKED.get()
    done = done if checked_cfg is cfg else frozenset()
    token = _CHECKED.set((cfg, done | frozenset(checks)))
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_condconv_config(cfg: CN) -> None:
    """Raises ValueError naming the key when a condconv_det config value is out of range."""
    # The allowed values live beside the code that uses them (imported here, in the function:
    # the modeling and engine modules import this one).
    from condconv_det.engine.trainer import OPTIMIZERS
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
        c.UPCYCLE_NOISE >= 0,
        "MODEL.CONDCONV.UPCYCLE_NOISE",
        c.UPCYCLE_NOISE,
        "must be >= 0 (the expert perturbation's std relative to the kernel's)",
    )
    _require(
        c.UPCYCLE_ROUTERS in UPCYCLE_ROUTERS,
        "MODEL.CONDCONV.UPCYCLE_ROUTERS",
        c.UPCYCLE_ROUTERS,
        f"must be one of {UPCYCLE_ROUTERS}",
    )
    _require(
        c.UPCYCLE_ROUTERS != "init" or c.ROUTING_ACTIVATION == "softmax" or c.STATIC_KERNEL,
        "MODEL.CONDCONV.UPCYCLE_ROUTERS",
        c.UPCYCLE_ROUTERS,
        "needs MODEL.CONDCONV.ROUTING_ACTIVATION softmax (or STATIC_KERNEL True): with sigmoid "
        "routing the experts' shares do not sum to one, and the upcycled model would not start "
        "as the static one",
    )
    _require(
        c.UPCYCLE_FROM_ITERS is None
        or (type(c.UPCYCLE_FROM_ITERS) is int and c.UPCYCLE_FROM_ITERS >= 0),
        "MODEL.CONDCONV.UPCYCLE_FROM_ITERS",
        c.UPCYCLE_FROM_ITERS,
        "must be None (as long as SOLVER.MAX_ITER) or a number of iterations >= 0 (0: from "
        "scratch)",
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
        c.EXPERT_DTYPE in EXPERT_DTYPES,
        "MODEL.CONDCONV.EXPERT_DTYPE",
        c.EXPERT_DTYPE,
        f"must be one of {tuple(EXPERT_DTYPES)}",
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


def check_ssd_input_config(cfg: CN) -> None:
    """Raises ValueError naming the key when an ``INPUT.SSD`` value is out of range."""
    from condconv_det.data.transforms import PHOTOMETRIC_FORMATS

    c = cfg.INPUT.SSD
    _require(c.SIZE > 0, "INPUT.SSD.SIZE", c.SIZE, "must be > 0")
    _require(
        not c.PHOTOMETRIC or cfg.INPUT.FORMAT in PHOTOMETRIC_FORMATS,
        "INPUT.FORMAT",
        cfg.INPUT.FORMAT,
        f"must be {' or '.join(repr(f) for f in PHOTOMETRIC_FORMATS)} with INPUT.SSD.PHOTOMETRIC",
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
