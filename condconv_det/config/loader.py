"""Loading configs: :func:`get_cfg`, :func:`load_config` for the tools, ``_BASE_`` files from
detectron2's model zoo (:class:`CondConvCfgNode`) and where each key got its value
(:func:`config_key_sources`)."""

import os
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import yaml
from detectron2.config import CfgNode as CN
from fvcore.common.config import BASE_KEY

from .defaults import add_condconv_config

__all__ = [
    "CondConvCfgNode",
    "KeySource",
    "MODEL_ZOO_PREFIX",
    "config_file_values",
    "config_key_sources",
    "get_cfg",
    "load_config",
    "model_zoo_config_path",
    "run_on_cpu_without_cuda",
]

# ``_BASE_: "model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"`` inherits a config of the
# installed detectron2 model zoo, so a config can change only what differs (e.g. the backbone).
MODEL_ZOO_PREFIX = "model_zoo://"


class CondConvCfgNode(CN):
    """detectron2's ``CfgNode`` whose ``_BASE_`` may also name a model-zoo config.

    Only the root node is of this class: children stay detectron2 ``CfgNode``s, so keys that other
    projects add later with ``CfgNode()`` still merge (yacs requires equal node types).
    """

    @classmethod
    def _create_config_tree_from_dict(cls, dic, key_list):
        return CN._create_config_tree_from_dict(dic, key_list)

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        with cls._open_cfg(filename) as f:
            text = f.read()
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.constructor.ConstructorError:  # e.g. !!python/object/apply:eval, as fvcore
            if not allow_unsafe:
                raise
            loaded = yaml.unsafe_load(text) or {}
        base = loaded.get("_BASE_")
        if not (isinstance(base, str) and base.startswith(MODEL_ZOO_PREFIX)):
            return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        base_cfg = cls.load_yaml_with_base(model_zoo_config_path(base), allow_unsafe=allow_unsafe)
        del loaded["_BASE_"]
        _merge_dict(loaded, base_cfg)
        return base_cfg


class KeySource(NamedTuple):
    """Where a config key got its value (:func:`config_key_sources`)."""

    rank: int  # merge order: the deepest _BASE_ file 0, ..., the config file, the command line
    where: str  # the file, or "the command line"


def config_key_sources(config_file: str, opts: Sequence[str] = ()) -> Dict[str, KeySource]:
    """Where each key set by a YAML config file (its ``_BASE_`` files included) or by command
    line overrides was set last, as ``merge_from_file`` then ``merge_from_list`` merge them.

    Args:
        config_file: the file given to ``--config-file``.
        opts: the ``KEY VALUE`` overrides.

    Returns:
        ``{"MODEL.SSD.NUM_CLASSES": KeySource(rank, where), ...}``; keys that keep their default
        are absent.
    """
    order = _merge_order(config_file)
    sources: Dict[str, KeySource] = {}
    for rank, (filename, loaded) in enumerate(order):
        for key in _flat_keys(loaded):
            sources[key] = KeySource(rank, filename)
    for key in opts[0::2]:
        sources[key] = KeySource(len(order), "the command line")
    return sources


def _merge_order(filename: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file, its own keys)`` of ``filename`` and its ``_BASE_`` files (one, or a list, as
    fvcore allows), in the order fvcore merges them: bases first."""
    with CondConvCfgNode._open_cfg(filename) as f:
        text = f.read()
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError:  # unsafe tags, which merge_from_file allows
        loaded = yaml.unsafe_load(text) or {}
    bases = loaded.pop(BASE_KEY, None)
    order = []
    for base in [] if bases is None else bases if isinstance(bases, list) else [bases]:
        order += _merge_order(_base_path(filename, base))
    return order + [(filename, loaded)]


def config_file_values(filename: str) -> Dict[str, Any]:
    """The keys a config file sets, its ``_BASE_`` files' included, merged as fvcore merges them
    (a file's own keys win over its bases'): what the file means, whatever its comments,
    formatting or key order. detectron2's and condconv_det's defaults are not in it."""
    values: Dict[str, Any] = {}
    for _, keys in _merge_order(filename):
        _merge_dict(keys, values)
    return values


def _base_path(filename: str, base: str) -> str:
    """The file that ``_BASE_: base`` in ``filename`` names, resolved as fvcore does."""
    if base.startswith(MODEL_ZOO_PREFIX):
        return model_zoo_config_path(base)
    base = os.path.expanduser(base)
    if not base.startswith(("/", "https://", "http://")):
        base = os.path.normpath(os.path.join(os.path.dirname(filename), base))
    return base


def _flat_keys(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def model_zoo_config_path(name: str) -> str:
    """The file of ``model_zoo://<path>`` in the installed detectron2 model zoo."""
    from detectron2 import model_zoo

    path = name[len(MODEL_ZOO_PREFIX) :] if name.startswith(MODEL_ZOO_PREFIX) else name
    try:
        return model_zoo.get_config_file(path)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"_BASE_ {name!r}: {path!r} is not a config of the installed detectron2 model zoo "
            "(detectron2/model_zoo/configs); check the spelling, or reinstall detectron2 with its "
            "model-zoo configs (see docs/install.md)."
        ) from e


def _merge_dict(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Merges ``a`` into ``b`` in place, ``a`` winning, like fvcore's ``_BASE_`` merge."""
    for key, value in a.items():
        if isinstance(value, dict) and isinstance(b.get(key), dict):
            _merge_dict(value, b[key])
        else:
            b[key] = value


def get_cfg() -> CN:
    """detectron2's default config with condconv_det's keys, able to load model-zoo bases."""
    from detectron2.config import get_cfg as d2_get_cfg

    cfg = CondConvCfgNode(d2_get_cfg())
    add_condconv_config(cfg)
    return cfg


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """A tool's config: :func:`get_cfg` with ``config_file`` and the ``KEY VALUE`` overrides
    ``opts`` merged, not frozen.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ValueError: ``opts`` are not KEY VALUE pairs of existing keys (naming them).
    """
    if not config_file:
        raise FileNotFoundError(
            "a config file is required (e.g. configs/shapes/ssd_condconv_MNv1.yaml)"
        )
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:  # yacs' errors name the key, or nothing
        raise ValueError(
            f"bad config overrides {list(opts)}: {e or 'odd number of items'}. Give KEY VALUE "
            "pairs of existing keys, after all --options."
        ) from e
    return cfg


def run_on_cpu_without_cuda(cfg: CN) -> bool:
    """Sets ``MODEL.DEVICE`` to the CPU when it asks for CUDA and there is none (rather than a
    crash when the model is built); returns whether it did, for the tool to say so."""
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False
