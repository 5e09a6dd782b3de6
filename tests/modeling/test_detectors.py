"""Every registered CondConv backbone trains in a detectron2 detector on CPU, by config only."""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from condconv_det import add_condconv_config


def _inputs(batch=2, height=96, width=128, empty_last=True):
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        n = 0 if (empty_last and i == batch - 1) else 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * 24
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        inputs.append({"image": image, "instances": inst, "height": height, "width": width})
    return inputs


def _cfg(base, backbone, **overrides):
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(base))
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.CONDCONV.NUM_EXPERTS = 2
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.35
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


RETINANET = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
FASTER_RCNN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
CASES = {
    "retinanet/resnet_fpn": (RETINANET, "build_condconv_retinanet_resnet_fpn_backbone", {}),
    "retinanet/mobilenet_fpn": (RETINANET, "build_condconv_retinanet_mobilenet_fpn_backbone", {}),
    "retinanet/efficientnet_fpn": (
        RETINANET,
        "build_condconv_retinanet_mobilenet_fpn_backbone",
        {"MODEL.MOBILENET.ARCH": "efficientnet_b0"},
    ),
    "faster_rcnn/resnet_fpn": (FASTER_RCNN, "build_condconv_resnet_fpn_backbone", {}),
    "faster_rcnn/mobilenet_v1_fpn": (
        FASTER_RCNN,
        "build_condconv_mobilenet_fpn_backbone",
        {
            "MODEL.MOBILENET.ARCH": "mobilenet_v1",
            "MODEL.MOBILENET.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        },
    ),
    # The plain backbones, on a single feature map.
    "faster_rcnn/resnet_res4": (
        FASTER_RCNN,
        "build_condconv_resnet_backbone",
        {
            "MODEL.RESNETS.OUT_FEATURES": ["res4"],
            "MODEL.CONDCONV.RESNET_STAGES": ["res4"],
            "MODEL.RPN.IN_FEATURES": ["res4"],
            "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
            "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64]],
        },
    ),
    "faster_rcnn/mobilenet_res5": (
        FASTER_RCNN,
        "build_condconv_mobilenet_backbone",
        {
            "MODEL.MOBILENET.OUT_FEATURES": ["res5"],
            "MODEL.RPN.IN_FEATURES": ["res5"],
            "MODEL.ROI_HEADS.IN_FEATURES": ["res5"],
            "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64]],
        },
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_detector_trains_and_predicts(case):
    base, backbone, overrides = CASES[case]
    torch.manual_seed(0)
    model = build_model(_cfg(base, backbone, **overrides))
    routers = [p for n, p in model.named_parameters() if "router" in n]
    assert routers, "the model has no CondConv"
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9
    )
    start = [p.detach().clone() for p in routers]
    model.train()
    with EventStorage(0):  # detectron2's detectors log training statistics to it
        for _ in range(3):
            losses = model(_inputs())
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(start, routers)), "routers did not train"
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in _inputs()])
    assert len(outputs) == 2
    assert all(o["instances"].image_size == (96, 128) for o in outputs)
