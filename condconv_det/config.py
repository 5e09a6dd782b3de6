"""Config keys of condconv_det. ``add_condconv_config(cfg)`` adds them to a detectron2 config.

Defaults equal the constructors' defaults; values are checked when a model is built
(:func:`check_condconv_config`), with a message that names the key.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_condconv_config", "check_condconv_config"]


def add_condconv_config(cfg: CN) -> None:
    """Adds ``MODEL.CONDCONV`` and ``MODEL.MOBILENET`` to ``cfg`` (in place)."""
    _C = cfg
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
    # Softmax temperature (logits are divided by it); must stay 1.0 with "sigmoid".
    _C.MODEL.CONDCONV.ROUTING_TEMPERATURE = 1.0
    # Dropout on the pooled routing input, in [0, 1).
    _C.MODEL.CONDCONV.ROUTING_DROPOUT = 0.0

    _C.MODEL.MOBILENET = CN()
    # Architecture table: "mobilenet_v1", "mobilenet_v2", "efficientnet_b0" (see
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


def check_condconv_config(cfg: CN) -> None:
    """Raises ValueError naming the key when a condconv_det config value is out of range."""
    c = cfg.MODEL.CONDCONV
    _require(c.NUM_EXPERTS >= 0, "MODEL.CONDCONV.NUM_EXPERTS", c.NUM_EXPERTS, "must be >= 0")
    stages = ("res2", "res3", "res4", "res5")
    _require(
        all(s in stages for s in c.RESNET_STAGES),
        "MODEL.CONDCONV.RESNET_STAGES",
        c.RESNET_STAGES,
        f"must list stages among {stages}",
    )
    _require(c.ROUTING in ("block", "layer"), "MODEL.CONDCONV.ROUTING", c.ROUTING, "must be 'block' or 'layer'")
    _require(
        c.ROUTING_ACTIVATION in ("sigmoid", "softmax"),
        "MODEL.CONDCONV.ROUTING_ACTIVATION",
        c.ROUTING_ACTIVATION,
        "must be 'sigmoid' or 'softmax'",
    )
    _require(c.ROUTING_TEMPERATURE > 0, "MODEL.CONDCONV.ROUTING_TEMPERATURE", c.ROUTING_TEMPERATURE, "must be > 0")
    _require(
        c.ROUTING_ACTIVATION == "softmax" or c.ROUTING_TEMPERATURE == 1.0,
        "MODEL.CONDCONV.ROUTING_TEMPERATURE",
        c.ROUTING_TEMPERATURE,
        "only applies to ROUTING_ACTIVATION 'softmax'; keep it 1.0 with 'sigmoid'",
    )
    _require(0.0 <= c.ROUTING_DROPOUT < 1.0, "MODEL.CONDCONV.ROUTING_DROPOUT", c.ROUTING_DROPOUT, "must be in [0, 1)")
    m = cfg.MODEL.MOBILENET
    _require(m.WIDTH_MULT > 0, "MODEL.MOBILENET.WIDTH_MULT", m.WIDTH_MULT, "must be > 0")
    _require(0.0 <= m.DROP_PATH_RATE < 1.0, "MODEL.MOBILENET.DROP_PATH_RATE", m.DROP_PATH_RATE, "must be in [0, 1)")


def _require(ok: bool, key: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{key} {what}, got {value!r}")
