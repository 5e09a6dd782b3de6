"""Datasets named by their files in the config: ``DATASETS.COCO_JSON.*`` (YAML configs, for
``tools/train_net.py`` and ``tools/demo.py``) and ``train.coco_json`` (LazyConfig, for
``tools/lazy_train_net.py``). docs/own_data.md is the user's side of this module.

For each split given (a JSON and its image folder, both or neither), the files are checked and
registered (:func:`~condconv_det.data.coco_json.register_coco_json`) before anything is built,
and the split's name replaces the dataset names of the config. Train and test splits must list
the same categories. The detector's class count becomes the number of the training JSON's
categories (the test JSON's when only that is given).

Which of two settings wins follows the order in which configs are merged: ``_BASE_`` files,
the config file, the command line. A dataset name or class count set *before* the paths (in a
``_BASE_`` of the file with the paths, or in the config file when the paths are on the command
line; in a LazyConfig, anywhere in the ``.py`` files) is replaced, and the replacement is logged.
One set *with or after* the paths (in the same file, or on the command line) is the user's: a
different dataset name is an error (two answers to "which data?"), a class count is checked
against the data.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from ..config import KeySource, config_key_sources
from ..data.coco_json import (
    CocoJsonSplit,
    check_same_categories,
    coco_json_dataset_name,
    register_coco_json,
)
from .trainer import num_classes_key

__all__ = [
    "CocoJsonDatasets",
    "Setting",
    "apply_coco_json_config",
    "apply_coco_json_for_inference",
    "apply_coco_json_lazy",
    "resolve_coco_json",
]

SPLITS = ("train", "test")
_USE = {"train": "train on", "test": "evaluate on"}


class Setting(NamedTuple):
    """A config value and where it was set."""

    key: str  # as the user writes it, e.g. "DATASETS.TRAIN"
    value: Any
    # Merge order of where it was set (later wins); -1: a default, or a value the user's own
    # settings cannot be told apart from (a LazyConfig's .py files).
    rank: int = -1
    where: str = "the config"


class CocoJsonDatasets(NamedTuple):
    """What :func:`resolve_coco_json` decided."""

    splits: Dict[str, CocoJsonSplit]  # "train" and/or "test" -> the registered split
    num_classes: int  # the class count the detector gets
    changes: List[str]  # what replaced which setting, for the log

    @property
    def thing_classes(self) -> List[str]:
        """The class names of the data (the same for every split)."""
        return next(iter(self.splits.values())).thing_classes


def resolve_coco_json(
    json_files: Mapping[str, Setting],
    image_roots: Mapping[str, Setting],
    dataset_names: Mapping[str, Setting],
    num_classes: Setting,
    needs: Sequence[str] = SPLITS,
) -> Optional[CocoJsonDatasets]:
    """Checks and registers the splits given by their files; decides the dataset names and the
    class count (the rules of the module docstring).

    Args:
        json_files, image_roots: per split ("train", "test"), the JSON and image folder
            settings; value "" (or None) when not given.
        dataset_names: per split, the setting of the dataset names the split replaces
            (``DATASETS.TRAIN``; a name or a list of names).
        num_classes: the detector's class-count setting.
        needs: the splits the caller will use ("train" to train, "test" to evaluate): a split
            used with the config's own dataset while the other split's files are given is an
            error (its classes need not be the data's).

    Returns:
        None when no split is given, else the registered splits, the class count and the list
        of replaced settings. The caller writes the names and class count into its config.

    Raises:
        ValueError, FileNotFoundError: with the setting, the bad value and the fix.
    """
    given = [split for split in SPLITS if _check_pair(json_files[split], image_roots[split])]
    if not given:
        return None
    paths_rank = min(json_files[split].rank for split in given)
    names = {}
    for split in given:
        json_setting, current = json_files[split], dataset_names[split]
        names[split] = coco_json_dataset_name(json_setting.value, image_roots[split].value)
        if _as_list(current.value) != [names[split]] and current.rank >= json_setting.rank:
            images_key = image_roots[split].key
            raise ValueError(
                f"{current.key} {current.value!r} ({current.where}) and {json_setting.key} "
                f"{json_setting.value!r} ({json_setting.where}) both say which data to "
                f"{_USE[split]}. {json_setting.key} registers its file as {names[split]!r} and "
                f"uses that as {current.key}: remove {current.key}, or remove {json_setting.key} "
                f"and {images_key} to {_USE[split]} {current.value!r}."
            )
    for split in needs:
        current = dataset_names[split]
        if split in given or not _as_list(current.value) or current.rank >= paths_rank:
            continue
        other = json_files[given[0]]
        none = f', or {current.key} "()" for none' if isinstance(current.value, tuple) else ""
        raise ValueError(
            f"{other.key} is given but not {json_files[split].key}, so the data to "
            f"{_USE[split]} would be {current.key} {current.value!r} from {current.where}, which "
            f"is not your dataset (its classes need not be those of {other.value}). Give "
            f"{json_files[split].key} and {image_roots[split].key} too, or set {current.key} "
            f"yourself with the paths: a registered dataset of the same classes{none}."
        )

    splits = {
        split: register_coco_json(
            json_files[split].value,
            image_roots[split].value,
            json_key=json_files[split].key,
            images_key=image_roots[split].key,
        )
        for split in given
    }
    if len(splits) == 2:
        check_same_categories(
            splits["train"], splits["test"], json_files["train"].key, json_files["test"].key
        )
    changes = [
        f"{dataset_names[s].key}: {names[s]!r}, registered from {splits[s].json_file} and "
        f"{splits[s].image_root} (the config said {dataset_names[s].value!r})"
        for s in given
        if _as_list(dataset_names[s].value) != [names[s]]
    ]

    source = json_files[given[0]]  # "train" when given
    data = splits[given[0]]
    count = len(data.categories)
    classes = ", ".join(data.thing_classes[:10]) + (", ..." if count > 10 else "")
    if num_classes.rank >= source.rank:
        if num_classes.value != count:
            raise ValueError(
                f"{num_classes.key} is {num_classes.value} ({num_classes.where}) but "
                f"{source.key} {source.value} has {count} categories ({classes}). Remove "
                f"{num_classes.key} to take the count from the data, or set it to {count}."
            )
    elif num_classes.value != count:
        changes.append(
            f"{num_classes.key}: {count}, the categories of {data.json_file} ({classes}); the "
            f"config said {num_classes.value}"
        )
    return CocoJsonDatasets(splits, count, changes)


def _check_pair(json_file: Setting, image_root: Setting) -> bool:
    """Whether a split is given; fails when only one of its two paths is, or a path is not a
    string."""
    for setting in (json_file, image_root):
        if setting.value is not None and not isinstance(setting.value, str):
            raise ValueError(
                f"{setting.key} must be a path (a string), got {setting.value!r} ({setting.where})."
            )
    if bool(json_file.value) == bool(image_root.value):
        return bool(json_file.value)
    if json_file.value:
        raise ValueError(
            f"{json_file.key} is {json_file.value!r} ({json_file.where}) but {image_root.key} is "
            f"not given: add {image_root.key} with the folder of the images of {json_file.value} "
            "(its file_name entries are relative to it)."
        )
    raise ValueError(
        f"{image_root.key} is {image_root.value!r} ({image_root.where}) but {json_file.key} is "
        f"not given: add {json_file.key} with the split's annotation file (a COCO instances "
        f"JSON), or remove {image_root.key}."
    )


def _as_list(names) -> List[str]:
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


# ---------------------------------------------------------------------------------------------
# YAML configs

_YAML_KEY = {"train": "TRAIN", "test": "TEST"}


def apply_coco_json_config(
    cfg, sources: Mapping[str, KeySource], needs: Sequence[str] = SPLITS
) -> Optional[CocoJsonDatasets]:
    """Resolves ``DATASETS.COCO_JSON.*`` of a YAML config (:func:`resolve_coco_json`) and writes
    the result into ``cfg`` (not frozen): ``DATASETS.TRAIN`` / ``DATASETS.TEST`` and the
    meta-architecture's class count (:func:`~condconv_det.engine.trainer.num_classes_key`).

    Args:
        cfg: the merged config.
        sources: where its keys were set (:func:`condconv_det.config.config_key_sources`).
        needs: the splits the tool uses (see :func:`resolve_coco_json`).

    Returns:
        None when no ``DATASETS.COCO_JSON`` path is given, else the decisions (log ``changes``).
    """

    def setting(key: str) -> Setting:
        node = cfg
        for part in key.split("."):
            node = node[part]
        source = sources.get(key, KeySource(-1, "the defaults"))
        return Setting(key, node, source.rank, source.where)

    prefix = "DATASETS.COCO_JSON."
    count_key = num_classes_key(cfg)
    result = resolve_coco_json(
        {s: setting(prefix + _YAML_KEY[s]) for s in SPLITS},
        {s: setting(f"{prefix}{_YAML_KEY[s]}_IMAGES") for s in SPLITS},
        {s: setting(f"DATASETS.{_YAML_KEY[s]}") for s in SPLITS},
        setting(count_key),
        needs,
    )
    if result is None:
        return None
    for split, data in result.splits.items():
        cfg.DATASETS[_YAML_KEY[split]] = (data.name,)
    node, name = cfg, count_key.split(".")
    for part in name[:-1]:
        node = node[part]
    node[name[-1]] = result.num_classes
    return result


def apply_coco_json_for_inference(cfg, config_file: str, opts: Sequence[str]) -> List[str]:
    """:func:`apply_coco_json_config` for a tool that runs a trained model over a dataset (the
    demo, the routing analysis): no split is required, and without a test split the training
    split becomes ``DATASETS.TEST`` (its class names label the output). Returns what changed,
    for the log."""
    own_data = apply_coco_json_config(cfg, config_key_sources(config_file, opts), needs=())
    if own_data is None:
        return []
    if "test" not in own_data.splits:
        cfg.DATASETS.TEST = (own_data.splits["train"].name,)
    return list(own_data.changes)


# ---------------------------------------------------------------------------------------------
# LazyConfig

LAZY_KEYS = ("train", "train_images", "test", "test_images")


def apply_coco_json_lazy(
    cfg, overrides: Sequence[str] = (), needs: Sequence[str] = SPLITS
) -> Optional[CocoJsonDatasets]:
    """Resolves ``train.coco_json`` of a LazyConfig (:func:`resolve_coco_json`) and writes the
    result into ``cfg``: ``dataloader.{train,test}.dataset.names``, the evaluator's
    ``dataset_name`` and ``model.num_classes`` (R-CNN: ``model.roi_heads.num_classes``).

    A ``.py`` config cannot tell its own settings from those it imports, so only the command
    line counts as set with the paths: dataset names and class counts of the ``.py`` files are
    replaced; on the command line, a different name is an error and a class count is checked.

    Args:
        cfg: the loaded config, overrides applied.
        overrides: the command line's ``key=value`` overrides.
        needs: the splits the tool uses (see :func:`resolve_coco_json`).
    """
    from omegaconf import OmegaConf

    paths = cfg.train.get("coco_json", None) or {}
    unknown = sorted(set(paths) - set(LAZY_KEYS))
    if unknown:
        raise ValueError(
            f"train.coco_json takes {', '.join(LAZY_KEYS)}; unknown: {', '.join(unknown)}."
        )
    on_command_line = {o.split("=", 1)[0].lstrip("+~") for o in overrides}

    def setting(key: str, value: Any, rank: int = -1) -> Setting:
        if key in on_command_line:
            return Setting(key, value, 1, "the command line")
        return Setting(key, value, rank, "the config file")

    def path(split: str, suffix: str = "") -> Setting:
        return setting(f"train.coco_json.{split}{suffix}", paths.get(split + suffix, ""), rank=0)

    if not any(paths.get(key) for key in LAZY_KEYS):
        return None
    names = {}
    for split in SPLITS:
        node = cfg.dataloader.get(split, None)
        dataset = node.get("dataset", None) if node is not None else None
        if not (hasattr(dataset, "get") and "names" in dataset):
            raise ValueError(
                f"train.coco_json needs dataloader.{split}.dataset to be a "
                "get_detection_dataset_dicts(names=...) node, as in detectron2's and "
                "condconv_det's LazyConfigs: its names are replaced by the registered split."
            )
        names[split] = setting(f"dataloader.{split}.dataset.names", dataset.names)
    count_key = "model.num_classes"
    if "roi_heads" in cfg.model and "num_classes" in cfg.model.roi_heads:
        count_key = "model.roi_heads.num_classes"
    if OmegaConf.select(cfg, count_key, default=None) is None:
        raise ValueError(
            "train.coco_json sets the detector's class count, but the config has neither "
            "model.num_classes nor model.roi_heads.num_classes."
        )
    result = resolve_coco_json(
        {s: path(s) for s in SPLITS},
        {s: path(s, "_images") for s in SPLITS},
        names,
        setting(count_key, OmegaConf.select(cfg, count_key)),
        needs,
    )
    for split, data in result.splits.items():
        cfg.dataloader[split].dataset.names = data.name
    evaluator = cfg.dataloader.get("evaluator", None)
    if "test" in result.splits and evaluator is not None and "dataset_name" in evaluator:
        if evaluator.dataset_name != result.splits["test"].name:  # not "${..test.dataset.names}"
            evaluator.dataset_name = result.splits["test"].name
            result.changes.append(f"dataloader.evaluator.dataset_name: {evaluator.dataset_name!r}")
    OmegaConf.update(cfg, count_key, result.num_classes, merge=False)
    return result
