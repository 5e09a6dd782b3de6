"""SSD300 with a CondConv-MobileNetV1, as L(...) nodes: the model of Base-SSD-CondConv.yaml with
``MODEL.CONDCONV.NUM_EXPERTS: 8`` (COCO-Detection/ssd300_condconv_MNv1.yaml).

Every constructor argument is a keyword named like its YAML key in lower snake case
(``MODEL.MOBILENET.WIDTH_MULT`` -> ``model.backbone.bottom_up.width_mult``). Shapes that the YAML
builders read off the built backbone are written out here, as detectron2's own lazy configs do:
changing the backbone's widths, features or extra layers means changing ``model.head.input_shape``
and ``num_anchors`` and ``model.default_box_generator.aspect_ratios`` with them.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from condconv_det.modeling.backbone import MobileNet, SSDBackbone
from condconv_det.modeling.meta_arch import SSD, DefaultBoxGenerator, SSDHead, SSDMatcher

model = L(SSD)(
    backbone=L(SSDBackbone)(
        bottom_up=L(MobileNet)(
            arch="mobilenet_v1",
            in_channels=3,
            width_mult=1.0,
            # CondConv from layer 7 on (the table's stages 4 and 5), 8 experts; 0: static twin.
            num_experts=8,
            routing="block",
            routing_activation="sigmoid",
            routing_temperature=1.0,
            routing_dropout=0.0,
            norm="SyncBN",  # 8 images per GPU at a batch of 64 on 8 GPUs
            out_features=["res4", "res5"],
            freeze_at=0,  # SSD fine-tunes the whole backbone, batch norms included
            router_init="${..router_init}",
            # DropExpert 0.1 (MODEL.CONDCONV.EXPERT_DROPOUT in Base-SSD-CondConv.yaml); the
            # extra layers and the predictors take the same options, as the YAML builders do.
            condconv_options=dict(expert_dropout=0.1),
        ),
        # 19x19 and 10x10 at 300x300, then extra layers at 5x5, 3x3, 2x2, 1x1 (p6..p9).
        in_features=["res4", "res5"],
        extra_channels=[512, 256, 256, 128],
        depthwise=False,
        norm="SyncBN",
        num_experts=0,
        condconv_options="${.bottom_up.condconv_options}",
        # Re-initialises every router of the backbone (MODEL.CONDCONV.ROUTER_INIT): "glorot" (the
        # official code's) or "zeros" (every example starts with the same routing).
        router_init="glorot",
    ),
    head=L(SSDHead)(
        # res4, res5 of MobileNetV1 1.0x, then the extra layers.
        input_shape=[ShapeSpec(channels=c) for c in (512, 1024, 512, 256, 256, 128)],
        num_classes="${..num_classes}",
        # 2 boxes of ratio 1 plus 2 per aspect ratio (2 and 3): the TF API's 6 per location.
        num_anchors=[6] * 6,
        depthwise=False,
        norm="${..backbone.norm}",
        # CondConv predictors (MODEL.SSD.HEAD_NUM_EXPERTS), routers initialised as the backbone's.
        num_experts=0,
        router_init="${..backbone.router_init}",
        condconv_options="${..backbone.bottom_up.condconv_options}",
    ),
    default_box_generator=L(DefaultBoxGenerator)(
        aspect_ratios=[[2.0, 3.0]] * 6, min_scale=0.2, max_scale=0.95, clip=True
    ),
    # SSD's variances (0.1, 0.1, 0.2, 0.2) on the centre-size encoding.
    box2box_transform=L(Box2BoxTransform)(weights=[10.0, 10.0, 5.0, 5.0]),
    matcher=L(SSDMatcher)(threshold=0.5),
    num_classes=80,
    neg_pos_ratio=3.0,
    min_negatives_per_image=3,
    box_reg_loss_type="smooth_l1",
    smooth_l1_beta=1.0,
    test_score_thresh=0.01,
    test_topk_candidates=400,
    test_nms_thresh=0.45,
    max_detections_per_image=100,  # COCO's limit
    pixel_mean=[123.675, 116.28, 103.53],  # RGB, ImageNet statistics (torchvision)
    pixel_std=[58.395, 57.12, 57.375],
)
