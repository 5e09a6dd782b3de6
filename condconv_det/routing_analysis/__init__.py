"""What CondConv routers do: capture their routing weights and summarise them per class and depth.

The paper (Yang et al. 2019, sec. 5) finds routing that is nearly class-agnostic in early layers
and class-specific in deep ones. ``tools/analyze_routing.py`` measures this with:

- :mod:`.recorder`: :class:`RoutingRecorder` captures the weights of every
  :class:`~condconv_det.layers.CondConvRouter` of a model with forward hooks (one router per
  block with "block" routing, one per conv with "layer" routing; either way each router runs
  once per forward), and :func:`collect_routing` runs a model over images with it. The training
  hook :class:`condconv_det.engine.hooks.RoutingStatsHook` uses the same recorder.
- :mod:`.summary`: :func:`routing_entropy` measures how spread out a routing vector is, and
  :func:`summarize_routing` reduces per-image routing to per-class means, entropies and the
  between-class variance.
- :mod:`.kernels`: :func:`routed_kernels` reads the experts each router drives, and
  :func:`kernel_spread` measures how much the mixed kernel varies between images (routing can
  vary while the kernel barely does, when the experts are near copies).
- :mod:`.report`: the summary as CSVs, plots and a text table.
- :mod:`.dataset`: the images of a registered detectron2 dataset and the classes each holds.

All but :mod:`.dataset` need only torch and numpy (matplotlib for the plots), and only they are
imported here: ``from condconv_det.routing_analysis.dataset import load_records``.
"""

from .kernels import KernelSpread, RoutedKernel, kernel_spread, routed_kernels
from .recorder import RoutingRecorder, collect_routing, find_routers
from .report import CSV_FILES, PLOT_FILES, format_table, write_csvs, write_plots
from .summary import (
    RoutingAnalysisError,
    RoutingSummary,
    routing_entropy,
    spread_over_depth,
    summarize_routing,
)

__all__ = [
    "CSV_FILES",
    "KernelSpread",
    "PLOT_FILES",
    "RoutingAnalysisError",
    "RoutingRecorder",
    "RoutedKernel",
    "RoutingSummary",
    "collect_routing",
    "find_routers",
    "format_table",
    "kernel_spread",
    "routed_kernels",
    "routing_entropy",
    "spread_over_depth",
    "summarize_routing",
    "write_csvs",
    "write_plots",
]
