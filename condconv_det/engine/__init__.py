"""Training and evaluation: detectron2's trainer, with what condconv_det's detectors need."""

from .hooks import (
    RoutingStartHook,
    RoutingStatsHook,
    RoutingTemperatureHook,
    routing_temperature_at,
)
from .launch import argument_parser, launch
from .trainer import Trainer, build_coco_evaluator, has_native_coco_eval
