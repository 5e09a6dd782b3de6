"""SSD with a CondConv-MobileNetV1 (0.5x, 7 experts from layer 7 on) on the bundled shapes
dataset: the LazyConfig twin of ssd_condconv_MNv1.yaml (the main job's CondConv model), sized for
2 CPU cores. Static twin: ssd_static_MNv1.py.

    python tools/lazy_train_net.py --config-file configs/shapes/ssd_condconv_MNv1.py
"""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ..common.data.ssd_coco import dataloader
from ..common.models.ssd_mobilenet import model

# Model: SSD300-MobileNetV1 made smaller for 128x128 images with objects of 10..56 px.
model.backbone.bottom_up.update(width_mult=0.5, out_features=["res3", "res4", "res5"], norm="BN")
# 7 experts: +7.4% multiply-adds over the static twin at 128x128, where 8 cost +8.4%.
model.backbone.bottom_up.num_experts = 7
# Trained from scratch in a stack without residuals: every example starts at the same routing
# (docs/training.md; 0.1 AP with the official Glorot init in this recipe).
model.backbone.router_init = "zeros"
# Routers with a hidden layer of a quarter of their input channels (Dynamic Convolution's), beside
# DropExpert 0.2 (the COCO configs' 0.1 gave 1.0 AP less over nine seeds): the main job's measured
# recipe (docs/training.md). Extra layers and predictors take the same options.
model.backbone.bottom_up.condconv_options.router_hidden_ratio = 0.25
model.backbone.bottom_up.condconv_options.expert_dropout = 0.2
# Start at stride 8 (16x16) with smaller boxes; two extra layers (p6, p7).
model.backbone.update(in_features=["res3", "res4", "res5"], extra_channels=[256, 128], norm="BN")
model.head.input_shape = [ShapeSpec(channels=c) for c in (128, 256, 512, 256, 128)]
model.head.num_anchors = [4] * 5  # 2 boxes of ratio 1, 2 of ratio 2
model.default_box_generator.update(aspect_ratios=[[2.0]] * 5, min_scale=0.08, max_scale=0.6)
model.num_classes = 5

# Data: a schedule of a few epochs, where SSD's expand / min-IoU crop / colour distortion (which
# pay off over hundreds of epochs) only slow it down; flips stay.
dataloader.train.dataset.names = "shapes_plain_train"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.Resize)(shape=[128, 128]),
]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.train.aspect_ratio_grouping = False  # square images: as Base-SSD-shapes.yaml
dataloader.test.dataset.names = "shapes_plain_val"
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=[128, 128])]
dataloader.test.num_workers = 1

optimizer = get_config("common/optim.py").SGD
optimizer.update(lr=0.02, momentum=0.9, weight_decay=0.00004)  # MobileNet's weight decay

# Cosine decay after 50 warm-up iterations (fractions of train.max_iter).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 2400,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = get_config("common/train.py").train
train.update(
    output_dir="./output",
    init_checkpoint="",
    # 24 epochs of the 800 training images; the YAML's main job starts both twins from the
    # static model trained 1600 iterations (MODEL.CONDCONV.UPCYCLE_FROM_ITERS).
    max_iter=2400,
    eval_period=0,  # evaluated once, at the end
    seed=0,
    device="cuda",  # tools/lazy_train_net.py falls back to the CPU without CUDA
    # Routing entropy and expert usage in metrics.json every N iterations (0: off); the YAML
    # configs' MODEL.CONDCONV.ROUTING_STATS. Read by tools/lazy_train_net.py.
    routing_stats_period=0,
    # Routing temperature annealed linearly from start to the routers' own temperature over the
    # first iters iterations (0: off); the YAML configs' MODEL.CONDCONV.TEMPERATURE_SCHEDULE.
    routing_temperature_schedule=dict(start=1.0, iters=0),
    # A COCO-format dataset given by its files, used in place of the datasets above and setting
    # model.num_classes (docs/own_data.md); the YAML configs' DATASETS.COCO_JSON. Read by
    # tools/lazy_train_net.py. "": not given.
    coco_json=dict(train="", train_images="", test="", test_images=""),
)
train.checkpointer.period = 800
