"""COCO-format datasets given by their files: one instances JSON and one image folder per split.

:func:`register_coco_json` checks a split completely before anything trains (the paths, the
JSON's content, every image file) and registers it under a name derived from its files
(:func:`coco_json_dataset_name`): the same files give the same name in every process and every
run, so a saved ``config.yaml`` still names the dataset. The split loads through
:func:`~condconv_det.data.datasets.load_coco_json_checked`; its class names are in the metadata
at once, for the evaluator's per-class AP and the demo's labels.

The config keys that use this (``DATASETS.COCO_JSON.*``, ``train.coco_json``) are resolved by
:mod:`condconv_det.engine.coco_json_config`.
"""

import hashlib
import os
from typing import Dict, List, NamedTuple

from .datasets import PathLike, check_coco_dataset, read_coco_json, register_coco_checked

__all__ = ["CocoJsonSplit", "check_same_categories", "coco_json_dataset_name", "register_coco_json"]


class CocoJsonSplit(NamedTuple):
    """A registered split (:func:`register_coco_json`)."""

    name: str
    json_file: str  # absolute
    image_root: str  # absolute
    categories: Dict[int, str]  # category id -> name, by increasing id

    @property
    def thing_classes(self) -> List[str]:
        """The class names in detectron2's contiguous order (by category id, as
        ``load_coco_json`` orders them)."""
        return list(self.categories.values())


def coco_json_dataset_name(json_file: PathLike, image_root: PathLike) -> str:
    """``<JSON file name>_<8 hex digits>``, the digits hashed from both absolute paths: readable
    in logs, stable across processes and runs, distinct for distinct files."""
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    digest = hashlib.sha1(f"{json_file}\n{image_root}".encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(json_file))[0]
    return f"{stem}_{digest}"


def register_coco_json(
    json_file: PathLike,
    image_root: PathLike,
    *,
    json_key: str = "json_file",
    images_key: str = "image_root",
) -> CocoJsonSplit:
    """Checks a COCO-format split and registers it under :func:`coco_json_dataset_name`.

    Registering the same files again replaces the earlier registration (same name).

    Args:
        json_file: the instances JSON.
        image_root: the folder its ``file_name`` entries are relative to.
        json_key, images_key: the settings that gave the paths, for the error messages (e.g.
            ``DATASETS.COCO_JSON.TRAIN`` and ``DATASETS.COCO_JSON.TRAIN_IMAGES``).

    Returns:
        the registered split.

    Raises:
        FileNotFoundError: a path does not exist, or image files of the JSON are missing.
        ValueError: an empty or invalid JSON, or malformed content (see
            :func:`~condconv_det.data.datasets.check_coco_dataset`).
    """
    json_path, image_path = os.fspath(json_file), os.fspath(image_root)
    json_file, image_root = os.path.abspath(json_path), os.path.abspath(image_path)
    _require_path(
        json_key,
        json_path,
        folder=False,
        what="the annotation file of the split, a COCO instances JSON",
    )
    _require_path(
        images_key,
        image_path,
        folder=True,
        what=f"the folder of the images of {json_path} (its file_name entries are relative to it)",
    )
    source = f"{json_key} {json_path}"
    coco = read_coco_json(json_file, source)
    try:
        check_coco_dataset(coco, image_root, source=source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (The image folder is {images_key}.)") from e
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    categories = dict(sorted(categories.items()))
    del coco  # freed before detectron2 parses the file again
    name = coco_json_dataset_name(json_file, image_root)
    metadata = {
        "thing_classes": list(categories.values()),
        # As load_coco_json sets them when the split loads (it refuses different values).
        "thing_dataset_id_to_contiguous_id": {i: k for k, i in enumerate(categories)},
    }
    register_coco_checked(name, metadata, json_file, image_root)
    return CocoJsonSplit(name, json_file, image_root, categories)


def _require_path(key: str, path: str, *, folder: bool, what: str) -> None:
    """Fails naming ``key`` when ``path`` is not an existing folder (``folder``) or file."""
    resolved = os.path.abspath(path)
    if (os.path.isdir if folder else os.path.isfile)(resolved):
        return
    if (os.path.isfile if folder else os.path.isdir)(resolved):
        state = f"is a {'file' if folder else 'folder'}, not"
    else:
        state = "does not exist; give"
    raise FileNotFoundError(
        f"{key} {path!r} {state} {what}. It resolves to {resolved} (relative paths start from "
        f"the working directory {os.getcwd()})."
    )


def check_same_categories(
    train: CocoJsonSplit, test: CocoJsonSplit, train_key: str = "train", test_key: str = "test"
) -> None:
    """Fails, naming both files and the difference, when two splits have other categories.

    A model trained on one set of classes is scored against the other's ids and names: a
    mismatch would give a meaningless AP after the whole training.

    Args:
        train, test: registered splits.
        train_key, test_key: the settings that gave their JSON files, for the message.
    """
    if train.categories == test.categories:
        return
    train_only = {i: n for i, n in train.categories.items() if test.categories.get(i) != n}
    test_only = {i: n for i, n in test.categories.items() if train.categories.get(i) != n}
    raise ValueError(
        f"The splits have different categories (id: name): only in {train_key} "
        f"{train.json_file}: {train_only or 'none'}; only in {test_key} {test.json_file}: "
        f"{test_only or 'none'}. Both must list the same categories with the same ids and names "
        "(a category without annotations in one split is fine): copy the 'categories' of one "
        "file into the other, or give the splits that belong together."
    )
