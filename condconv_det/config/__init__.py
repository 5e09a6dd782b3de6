"""condconv_det's config: the keys (:mod:`.defaults`), their range checks (:mod:`.checks`) and
loading (:mod:`.loader`). ``add_condconv_config(cfg)`` adds the keys to a detectron2 config.

Defaults equal the constructors' defaults; values are checked once when a model is built
(:func:`check_condconv_config`, run through :func:`check_config`), with a message that names the
key.
"""

from .checks import (
    check_condconv_config,
    check_config,
    check_ssd_config,
    check_ssd_input_config,
    checked_config,
)
from .defaults import add_condconv_config, condconv_options
from .inference import store_experts_for_inference
from .loader import (
    MODEL_ZOO_PREFIX,
    CondConvCfgNode,
    KeySource,
    config_file_values,
    config_key_sources,
    get_cfg,
    load_config,
    model_zoo_config_path,
    run_on_cpu_without_cuda,
)

__all__ = [
    "add_condconv_config",
    "check_condconv_config",
    "check_config",
    "check_ssd_config",
    "check_ssd_input_config",
    "checked_config",
    "condconv_options",
    "config_file_values",
    "config_key_sources",
    "get_cfg",
    "load_config",
    "run_on_cpu_without_cuda",
    "store_experts_for_inference",
    "CondConvCfgNode",
    "KeySource",
    "MODEL_ZOO_PREFIX",
]
