"""Training, evaluation and inference: detectron2's trainer, with what condconv_det's detectors
need, and a predictor for single images."""

from .._compat import has_native_coco_eval
from .hooks import (
    RoutingStartHook,
    RoutingStatsHook,
    RoutingTemperatureHook,
    routing_temperature_at,
)
from .launch import argument_parser, launch
from .predictor import Predictor, lower_score_thresholds
from .trainer import Trainer, build_coco_evaluator
