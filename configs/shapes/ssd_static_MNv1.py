"""Static twin of ssd_condconv_MNv1.py (and of ssd_static_MNv1.yaml): the same SSD-MobileNetV1
0.5x with plain convs."""

from .ssd_condconv_MNv1 import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.num_experts = 0
