"""SSD: matching, box encoding, hard-negative mining and default boxes against hand-computed
values; the SSD backbones' declared shapes; train and eval steps of tiny detectors on CPU."""

import collections
import inspect
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from condconv_det import add_condconv_config
from condconv_det.config import check_ssd_config, checks
from condconv_det.layers import CondConv2d, CondConvRouter
from condconv_det.modeling.backbone import SSDBackbone
from condconv_det.modeling.meta_arch import (
    SSD,
    DefaultBoxGenerator,
    SSDHead,
    SSDMatcher,
    default_box_scales,
    hard_negative_mining,
)

# ---------------------------------------------------------------------------------------------
# Matching


def test_matcher_threshold_forced_and_background():
    iou = torch.tensor(
        [
            # box0  box1  box2  box3  box4
            [0.60, 0.30, 0.10, 0.00, 0.55],  # gt0: box0 by threshold
            [0.20, 0.40, 0.70, 0.00, 0.00],  # gt1: box2 by threshold
            [0.00, 0.45, 0.00, 0.00, 0.00],  # gt2: best box1, below threshold: forced
            [0.00, 0.00, 0.00, 0.00, 0.30],  # gt3: best box4, taking it from gt0 (0.55)
            [0.00, 0.00, 0.00, 0.00, 0.00],  # gt4: overlaps nothing, not forced anywhere
        ]
    )
    matches, labels = SSDMatcher(0.5)(iou)
    assert matches.tolist() == [0, 2, 1, 0, 3]
    assert labels.tolist() == [1, 1, 1, 0, 1]  # box3 is background


def test_matcher_shared_best_box_goes_to_the_later_gt_and_empty_gt():
    iou = torch.tensor([[0.3, 0.1], [0.2, 0.0], [0.4, 0.1]])  # every gt's best box is box0
    matches, labels = SSDMatcher(0.5)(iou)
    assert matches.tolist() == [2, 0] and labels.tolist() == [1, 0]
    matches, labels = SSDMatcher(0.5)(torch.zeros(0, 3))
    assert matches.tolist() == [0, 0, 0] and labels.tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Box encoding


def test_box_encoding_equals_ssd_variances():
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    default = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # cx 5, cy 10, w 10, h 20
    gt = torch.tensor([[2.0, 4.0, 14.0, 24.0]])  # cx 8, cy 14, w 12, h 20
    # SSD: ((8 - 5) / 10 / 0.1, (14 - 10) / 20 / 0.1, log(12 / 10) / 0.2, log(20 / 20) / 0.2)
    expected = torch.tensor([[3.0, 2.0, 0.9116078, 0.0]])
    torch.testing.assert_close(transform.get_deltas(default, gt), expected)
    torch.testing.assert_close(transform.apply_deltas(expected, default), gt)


def test_box_encoding_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    default = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 50], dim=1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 50], dim=1)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    decoded = transform.apply_deltas(transform.get_deltas(default, gt), default)
    torch.testing.assert_close(decoded, gt, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Hard-negative mining


def test_hard_negative_mining_keeps_the_highest_loss_negatives():
    losses = torch.tensor(
        [
            [0.5, 9.0, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2],  # 1 positive (9.0) -> 3 negatives
            [0.1, 0.4, 0.3, 0.2, 0.6, 0.0, 0.5, 0.05],  # no positive -> min_negatives = 2
        ]
    )
    positive = torch.zeros(2, 8, dtype=torch.bool)
    positive[0, 1] = True
    kept = hard_negative_mining(losses, positive, neg_pos_ratio=3, min_negatives=2)
    assert kept[0].nonzero().flatten().tolist() == [2, 4, 6]
    assert kept[1].nonzero().flatten().tolist() == [4, 6]
    # Without a minimum, an image without positives keeps no negatives.
    kept = hard_negative_mining(losses, positive, neg_pos_ratio=3, min_negatives=0)
    assert kept[1].sum() == 0


def test_hard_negative_mining_caps_at_available_and_breaks_ties_by_index():
    losses = torch.tensor([[5.0, 4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    positive = torch.tensor([[True, True, False, False], [False] * 4])
    kept = hard_negative_mining(losses, positive, neg_pos_ratio=3, min_negatives=2)
    assert kept.tolist() == [[False, False, True, True], [True, True, False, False]]


# ---------------------------------------------------------------------------------------------
# Default boxes


def test_default_box_scales_are_linear_plus_one():
    expected = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]
    assert default_box_scales(6, 0.2, 0.95) == pytest.approx(expected)
    assert default_box_scales(1, 0.3, 0.6) == [0.3, 0.6]


def test_default_boxes_against_hand_values():
    # Two levels, scales 0.2 and 0.9 (then 1.0); ratio 2 on both: 4 boxes per location.
    gen = DefaultBoxGenerator(
        aspect_ratios=[[2.0], [2.0]], min_scale=0.2, max_scale=0.9, clip=False
    )
    assert gen.scales == pytest.approx([0.2, 0.9, 1.0])
    assert gen.num_cell_anchors == [4, 4]
    level0, level1 = gen.grid_default_boxes([(2, 2), (1, 1)], (100, 100))
    assert level0.shape == (2 * 2 * 4, 4) and level1.shape == (4, 4)
    centres = (level0[:, :2] + level0[:, 2:]) / 2
    # Order: (row, column, box); cell (0, 1) is x = 75, y = 25.
    expected_centres = [[25, 25]] * 4 + [[75, 25]] * 4 + [[25, 75]] * 4 + [[75, 75]] * 4
    torch.testing.assert_close(centres, torch.tensor(expected_centres, dtype=torch.float64))
    s01 = math.sqrt(0.2 * 0.9) * 50  # half side of the extra 1:1 box
    w, h = 0.2 * math.sqrt(2) * 50, 0.2 / math.sqrt(2) * 50  # half sides of the 2:1 box
    expected0 = [
        [15, 15, 35, 35],
        [25 - s01, 25 - s01, 25 + s01, 25 + s01],
        [25 - w, 25 - h, 25 + w, 25 + h],
        [25 - h, 25 - w, 25 + h, 25 + w],
    ]
    torch.testing.assert_close(level0[:4], torch.tensor(expected0, dtype=torch.float64))
    w, h = 0.9 * math.sqrt(2) * 50, 0.9 / math.sqrt(2) * 50
    # [5, 5, 95, 95], [2.566, ...], [-13.64, 18.18, 113.64, 81.82], ...
    expected1 = [
        [5, 5, 95, 95],
        [50 - math.sqrt(0.9) * 50] * 2 + [50 + math.sqrt(0.9) * 50] * 2,
        [50 - w, 50 - h, 50 + w, 50 + h],
        [50 - h, 50 - w, 50 + h, 50 + w],
    ]
    torch.testing.assert_close(level1, torch.tensor(expected1, dtype=torch.float64))

    clipped = DefaultBoxGenerator(aspect_ratios=[[2.0], [2.0]], min_scale=0.2, max_scale=0.9)
    _, level1 = clipped.grid_default_boxes([(2, 2), (1, 1)], (100, 100))
    torch.testing.assert_close(
        level1[2], torch.tensor([0, 50 - h, 100, 50 + h], dtype=torch.float64)
    )
    # Non-square input: sizes are fractions of each side, as in the paper's normalised coordinates.
    _, level1 = gen.grid_default_boxes([(2, 2), (1, 1)], (100, 200))
    torch.testing.assert_close(level1[0], torch.tensor([10, 5, 190, 95], dtype=torch.float64))


def test_default_box_generator_forward_is_cached_and_from_config():
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.SSD.ASPECT_RATIOS = [[2.0, 3.0]]
    shapes = [ShapeSpec(channels=8, stride=s) for s in (16, 32, 64)]
    gen = DefaultBoxGenerator(cfg, shapes)
    assert gen.num_cell_anchors == [6, 6, 6]
    features = [torch.zeros(1, 8, s, s) for s in (19, 10, 5)]
    boxes = gen(features, (300, 300))
    assert [len(b) for b in boxes] == [19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6]
    assert all(b.tensor.dtype == torch.float32 for b in boxes)
    assert gen(features, (300, 300)) is boxes
    cfg.MODEL.SSD.ASPECT_RATIOS = [[2.0], [3.0]]
    with pytest.raises(ValueError, match="MODEL.SSD.ASPECT_RATIOS"):
        DefaultBoxGenerator(cfg, shapes)


# ---------------------------------------------------------------------------------------------
# SSD backbones


def _cfg(**overrides):
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SSD"
    cfg.MODEL.BACKBONE.NAME = "build_condconv_mobilenet_ssd_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.MOBILENET.ARCH = "mobilenet_v1"
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.25
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res4", "res5"]
    cfg.MODEL.CONDCONV.NUM_EXPERTS = 2
    cfg.MODEL.SSD.NUM_CLASSES = 3
    cfg.MODEL.SSD.EXTRA_CHANNELS = [32, 16, 16, 16]
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


SSDLITE = {
    "MODEL.MOBILENET.ARCH": "mobilenet_v2",
    "MODEL.MOBILENET.OUT_FEATURES": ["res4", "head"],
    "MODEL.SSD.IN_FEATURES": ["res4", "head"],
    "MODEL.SSD.EXTRA_DEPTHWISE": True,
    "MODEL.SSD.HEAD_DEPTHWISE": True,
}
RESNET = {
    "MODEL.BACKBONE.NAME": "build_condconv_resnet_ssd_backbone",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.RESNETS.OUT_FEATURES": ["res4", "res5"],
}
BACKBONES = {"mobilenet_v1": {}, "mobilenet_v2_ssdlite": SSDLITE, "resnet18": RESNET}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_ssd_backbone_output_shape_equals_real_outputs(name):
    cfg = _cfg(**BACKBONES[name], **{"MODEL.SSD.EXTRA_NUM_EXPERTS": 2})
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))
    assert backbone.size_divisibility == 0
    backbone.eval()
    height, width = 150, 170  # not multiples of 32; a 3x3 stride-2 conv maps s to ceil(s / 2)
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, height, width))
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes) == cfg.MODEL.SSD.IN_FEATURES + ["p6", "p7", "p8", "p9"]
    for feature, out in outputs.items():
        spec = shapes[feature]
        expected = (
            1,
            spec.channels,
            math.ceil(height / spec.stride),
            math.ceil(width / spec.stride),
        )
        assert out.shape == expected, feature
    assert [shapes[f].channels for f in ("p6", "p7", "p8", "p9")] == [32, 16, 16, 16]
    assert any(isinstance(m, CondConv2d) for m in backbone.p6.modules())


def test_ssd_backbone_names_the_missing_key():
    cfg = _cfg(**{"MODEL.SSD.IN_FEATURES": ["res3", "res5"]})
    with pytest.raises(ValueError, match="MODEL.SSD.IN_FEATURES.*MODEL.MOBILENET.OUT_FEATURES"):
        build_model(cfg)
    with pytest.raises(ValueError, match="MODEL.SSD.IOU_THRESHOLD"):
        check_ssd_config(_cfg(**{"MODEL.SSD.IOU_THRESHOLD": 0.0}))
    with pytest.raises(ValueError, match="MODEL.SSD.ASPECT_RATIOS"):
        build_model(_cfg(**{"MODEL.SSD.ASPECT_RATIOS": [[2.0], [3.0]]}))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_one_build_checks_each_value_once(name, monkeypatch):
    rules = collections.Counter()
    require = checks._require

    def counting_require(ok, key, value, what):
        rules[key, what] += 1
        require(ok, key, value, what)

    def assert_each_rule_ran_once():
        assert {"MODEL.CONDCONV.ROUTING", "MODEL.SSD.NUM_CLASSES"} <= {key for key, _ in rules}
        assert [rule for rule, n in rules.items() if n != 1] == []
        rules.clear()

    monkeypatch.setattr(checks, "_require", counting_require)
    cfg = _cfg(**BACKBONES[name])
    build_model(cfg)
    assert_each_rule_ran_once()
    build_model(cfg)  # a second build checks again
    assert_each_rule_ran_once()
    build_backbone(cfg)  # alone, as a user may build it
    assert_each_rule_ran_once()
    cfg.MODEL.CONDCONV.ROUTING = "stage"
    with pytest.raises(ValueError, match="MODEL.CONDCONV.ROUTING must be one of"):
        build_backbone(cfg)


# ---------------------------------------------------------------------------------------------
# The detector


def _inputs(sizes=((128, 128), (128, 128)), num_gt=(3, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for (height, width), n in zip(sizes, num_gt):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * 32
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        inputs.append({"image": image, "instances": inst})
    return inputs


MODELS = {
    "ssd_mobilenet_v1": {"MODEL.SSD.EXTRA_NUM_EXPERTS": 2, "MODEL.SSD.HEAD_NUM_EXPERTS": 2},
    "ssdlite_mobilenet_v2": {**SSDLITE, "MODEL.SSD.HEAD_NUM_EXPERTS": 2},
    "ssd_mobilenet_v1_giou": {"MODEL.SSD.BBOX_REG_LOSS_TYPE": "giou"},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_step_gives_every_parameter_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(_cfg(**MODELS[name]))
    model.train()
    with EventStorage(0):
        losses = model(_inputs())
    assert sorted(losses) == ["loss_box_reg", "loss_cls"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    routers = [n for n in params if "router" in n]
    experts = [n for n, m in model.named_modules() if isinstance(m, CondConv2d)]
    assert any(n.startswith("backbone.bottom_up.") for n in routers)
    if "HEAD_NUM_EXPERTS" in str(MODELS[name]):
        assert any(n.startswith("head.") for n in routers) and any(
            n.startswith("head.") for n in experts
        )
    assert any(params[n].grad.abs().sum() > 0 for n in routers)


def test_train_step_without_ground_truth_mines_negatives_only():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    with EventStorage(0):
        losses = model(_inputs(num_gt=(0, 0)))
    assert losses["loss_box_reg"] == 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()


def test_losses_against_hand_values():
    model = build_model(_cfg())
    k = model.num_classes  # 3: logits have 4 columns
    default_boxes = [
        Boxes(torch.tensor([[0.0, 0.0, 10.0, 20.0], [50, 50, 60, 60]])),
        Boxes(torch.tensor([[0.0, 0, 5, 5], [90, 90, 99, 99]])),
    ]
    pred_logits = [torch.zeros(1, 2, k + 1), torch.zeros(1, 2, k + 1)]
    pred_deltas = [torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)]
    gt_labels = [torch.tensor([1, k, k, k])]
    gt_boxes = [torch.tensor([[2.0, 4.0, 14.0, 24.0]] + [[0.0] * 4] * 3)]
    with EventStorage(0):
        losses = model.losses(default_boxes, pred_logits, gt_labels, pred_deltas, gt_boxes)
    # One positive, three mined negatives, each with cross-entropy log(4); targets
    # (3, 2, 5 log 1.2, 0) under smooth-L1 with beta 1: 2.5 + 1.5 + 0.5 (5 log 1.2)^2 + 0.
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(4 * math.log(4)))
    expected_box = 2.5 + 1.5 + 0.5 * (5 * math.log(1.2)) ** 2
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(expected_box))


def test_labels_of_default_boxes():
    model = build_model(_cfg())
    k = model.num_classes
    default_boxes = [
        Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 30, 30]]))
    ]
    gt = Instances((40, 40))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [21, 21, 31, 31]]))
    gt.gt_classes = torch.tensor([2, 0])
    empty = Instances((40, 40))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    labels, boxes = model.label_default_boxes(default_boxes, [gt, empty])
    # IoU of gt1 with box2: 81 / 119 >= 0.5; box1 and box3 overlap below 0.5: background.
    assert labels[0].tolist() == [2, k, 0, k]
    assert boxes[0][0].tolist() == [0, 0, 10, 10] and boxes[0][2].tolist() == [21, 21, 31, 31]
    assert labels[1].tolist() == [k] * 4


def test_inference_per_class_topk_threshold_and_limit():
    model = build_model(_cfg(**{"MODEL.SSD.NUM_CLASSES": 2}))
    default_boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]])
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [4, 0, 0]])
    deltas = torch.zeros(3, 4)
    model.test_topk_candidates = 1
    out = model.inference_single_image(default_boxes, logits, deltas, (128, 128))
    top = math.exp(5) / (math.exp(5) + 2)
    assert sorted(out.pred_classes.tolist()) == [0, 1]
    assert out.scores.tolist() == pytest.approx([top, top])
    # Per class the 2 best: class 0 at boxes 0, 2; class 1 at box 1 and at box 2 (score 0.0177 >
    # 0.01; at box 0 it is 0.0066). The 3 best of these 4 survive.
    model.test_topk_candidates, model.max_detections_per_image = 2, 3
    out = model.inference_single_image(default_boxes, logits, deltas, (128, 128))
    assert out.scores.tolist() == pytest.approx([top, top, math.exp(4) / (math.exp(4) + 2)])
    assert out.pred_boxes.tensor[2].tolist() == [100, 100, 110, 110]
    model.max_detections_per_image = 10
    out = model.inference_single_image(default_boxes, logits, deltas, (128, 128))
    assert len(out) == 4 and out.scores[3].item() == pytest.approx(1 / (math.exp(4) + 2))


def test_inference_returns_boxes_in_the_original_image_size():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.SSD.HEAD_NUM_EXPERTS": 2}))
    model.eval()
    image = _inputs()[0]["image"]
    with torch.no_grad():
        (same,) = model([{"image": image}])
        (scaled,) = model([{"image": image, "height": 256, "width": 384}])
        (other,) = model([{"image": torch.rand(3, 100, 140) * 255}])  # any size works
    same, scaled = same["instances"], scaled["instances"]
    assert same.image_size == (128, 128) and scaled.image_size == (256, 384)
    assert 0 < len(same) <= 100 and len(same) == len(scaled)
    assert set(same.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    factors = torch.tensor([3.0, 2.0, 3.0, 2.0])
    torch.testing.assert_close(scaled.pred_boxes.tensor, same.pred_boxes.tensor * factors)
    boxes = scaled.pred_boxes.tensor
    assert boxes.min() >= 0 and (boxes[:, 0::2] <= 384).all() and (boxes[:, 1::2] <= 256).all()
    assert other["instances"].image_size == (100, 140)


def test_config_defaults_equal_constructor_defaults():
    cfg = get_cfg()
    add_condconv_config(cfg)
    s = cfg.MODEL.SSD

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    expected = {
        SSD.__init__: {
            "neg_pos_ratio": s.NEG_POS_RATIO,
            "min_negatives_per_image": s.MIN_NEGATIVES_PER_IMAGE,
            "box_reg_loss_type": s.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": s.SMOOTH_L1_BETA,
            "test_score_thresh": s.SCORE_THRESH_TEST,
            "test_topk_candidates": s.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": s.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        },
        SSDBackbone.__init__: {
            "extra_channels": tuple(s.EXTRA_CHANNELS),
            "depthwise": s.EXTRA_DEPTHWISE,
            "norm": s.NORM,
            "num_experts": s.EXTRA_NUM_EXPERTS,
        },
        SSDHead.__init__: {
            "depthwise": s.HEAD_DEPTHWISE,
            "norm": s.NORM,
            "num_experts": s.HEAD_NUM_EXPERTS,
        },
        DefaultBoxGenerator.__init__: {
            "min_scale": s.MIN_SCALE,
            "max_scale": s.MAX_SCALE,
            "clip": s.CLIP_DEFAULT_BOXES,
        },
        SSDMatcher.__init__: {"threshold": s.IOU_THRESHOLD},
    }
    for fn, values in expected.items():
        assert {k: defaults(fn)[k] for k in values} == values, fn.__qualname__
    assert tuple(s.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)


@pytest.mark.parametrize("init", ["zeros", "glorot"])
def test_head_routers_follow_router_init(init):
    cfg = _cfg(**{"MODEL.SSD.HEAD_NUM_EXPERTS": 2, "MODEL.CONDCONV.ROUTER_INIT": init})
    routers = [m for m in build_model(cfg).head.modules() if isinstance(m, CondConvRouter)]
    assert routers
    zero = [bool(r.fc.weight.abs().sum() == 0) for r in routers]
    assert all(zero) if init == "zeros" else not any(zero)
    shapes = [ShapeSpec(channels=8, stride=8)]
    head = SSDHead(
        input_shape=shapes, num_classes=2, num_anchors=[4], num_experts=2, router_init="zeros"
    )
    assert all(
        m.fc.weight.abs().sum() == 0 for m in head.modules() if isinstance(m, CondConvRouter)
    )
    with pytest.raises(ValueError, match="router_init must be None or one of"):
        SSDHead(input_shape=shapes, num_classes=2, num_anchors=[4], router_init="normal")


@pytest.mark.parametrize("depthwise", [False, True])
def test_ssd_head_scripts(depthwise):
    torch.manual_seed(0)
    shapes = [ShapeSpec(channels=8, stride=8), ShapeSpec(channels=16, stride=16)]
    head = SSDHead(
        input_shape=shapes, num_classes=3, num_anchors=[4, 6], depthwise=depthwise, num_experts=2
    ).eval()
    scripted = torch.jit.script(head)
    features = [torch.randn(3, 8, 6, 6), torch.randn(3, 16, 3, 3)]
    for got, want in zip(scripted(features), head(features)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("depthwise", [False, True])
def test_ssd_backbone_scripts(depthwise):
    from condconv_det.modeling.backbone import MobileNet

    torch.manual_seed(0)
    bottom_up = MobileNet("tiny_v2", num_experts=2, out_features=["res4", "res5"])
    backbone = SSDBackbone(
        bottom_up=bottom_up,
        in_features=["res4", "res5"],
        extra_channels=[16, 8],
        depthwise=depthwise,
        num_experts=2,
    ).eval()
    scripted = torch.jit.script(backbone)
    x = torch.randn(2, 3, 96, 80)
    got, want = scripted(x), backbone(x)
    assert list(got) == list(want) == ["res4", "res5", "p6", "p7"]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
