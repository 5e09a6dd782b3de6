"""Dataset registration: the bundled shapes dataset, and COCO-format datasets checked on load.

Importing this module (``import condconv_det`` does) registers ``shapes_train`` and
``shapes_val`` in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``, rooted at
``$DETECTRON2_DATASETS/condconv_shapes`` (``DETECTRON2_DATASETS`` defaults to ``datasets``, as in
``detectron2/data/datasets/builtin.py``). Nothing is generated at import: the first
``DatasetCatalog.get("shapes_train")`` (or ``shapes_val``) generates the dataset, later ones
reuse it. Call :func:`register_shapes` again to use another root or other parameters.

detectron2's ``load_coco_json`` trusts its input: a missing file, a box in the wrong format or
an unknown category id surfaces as an assertion or a ``KeyError`` deep inside a data-loader
worker. :func:`load_coco_json_checked` (used by :func:`register_coco_checked` and the shapes
registration) checks the file first and fails with a message that names the problem and the fix.
"""

import inspect
import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from .shapes import dataset_classes, generate_shapes_dataset, shapes_dataset_paths

__all__ = [
    "DIGITS_DATASETS",
    "SHAPES_DATASETS",
    "SHAPES_LARGE_DATASETS",
    "SHAPES_PLAIN_DATASETS",
    "SHAPES_SINGLE_DATASETS",
    "check_coco_dataset",
    "default_shapes_root",
    "load_coco_json_checked",
    "read_coco_json",
    "register_coco_checked",
    "register_digits",
    "register_shapes",
    "register_shapes_large",
    "register_shapes_plain",
    "register_shapes_single",
]

logger = logging.getLogger(__name__)

SHAPES_DATASETS: Tuple[str, str] = ("shapes_train", "shapes_val")
SHAPES_PLAIN_DATASETS: Tuple[str, str] = ("shapes_plain_train", "shapes_plain_val")
SHAPES_SINGLE_DATASETS: Tuple[str, str] = ("shapes_single_train", "shapes_single_val")
SHAPES_LARGE_DATASETS: Tuple[str, str] = ("shapes_large_train", "shapes_large_val")
DIGITS_DATASETS: Tuple[str, str] = ("digits_train", "digits_val")

PathLike = Union[str, os.PathLike]


def default_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/condconv_shapes``, with detectron2's default ``datasets``."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "condconv_shapes")


def _missing_path_error(what: str, path: str) -> FileNotFoundError:
    value = os.environ.get("DETECTRON2_DATASETS")
    setting = (
        f"now {value!r}"
        if value is not None
        else f"unset, so 'datasets' in the working directory {os.getcwd()}"
    )
    return FileNotFoundError(
        f"The {what} {path} does not exist. Datasets are looked up under $DETECTRON2_DATASETS "
        f"({setting}): set it to the folder that holds your datasets, or put the dataset there "
        "(COCO: coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/, see "
        "detectron2's datasets/README.md). The bundled shapes dataset needs no download: "
        "use shapes_train / shapes_val, generated on first use."
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_coco_dataset(
    coco: Mapping[str, Any], image_root: Optional[PathLike] = None, source: str = "COCO json"
) -> Dict[str, int]:
    """Checks a parsed COCO instances JSON for what would break detectron2 later.

    Raises on: no images; no categories, a category without a name, or duplicate category
    ids; images without id, file name or positive size, or with duplicate ids; duplicate
    annotation ids; an annotation with an unknown category id, a missing or malformed box (not
    4 finite numbers), a negative width or height, a box outside its image by more than 5% of
    the image side (plus 2 px), or COCO's unsupported ``"ignore"`` flag; image files missing
    under ``image_root``.

    Tolerated (counted in the summary): boxes of zero width or height
    (:func:`load_coco_json_checked` skips them with a warning; they could not be matched to any
    prediction); annotations of images not in the file (detectron2 drops them, with a warning);
    crowd annotations (detectron2's mappers drop them in training). Image contents are not read:
    grayscale, RGBA or 16-bit files are the mapper's business (it converts them).

    Args:
        coco: the parsed JSON (``images``, ``annotations``, ``categories``).
        image_root: the folder of the images; if given, every image file must exist there.
        source: how to name the data in error messages, e.g. the JSON's path.

    Returns:
        counts: ``images``, ``annotations``, ``empty_boxes``, ``orphan_annotations``, ``crowd``.

    Raises:
        ValueError: malformed content; the message names the entry and the fix.
        FileNotFoundError: image files missing under ``image_root``.
    """
    images = coco.get("images")
    if not isinstance(images, list) or not images:
        raise ValueError(
            f"{source} lists no images: the file is empty, cut short or not a COCO instances "
            "file. Generate or download it again."
        )
    categories = coco.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{source} has no 'categories'; a COCO instances file lists its classes.")
    unnamed = [
        c for c in categories if not isinstance(c, dict) or not isinstance(c.get("name"), str)
    ]
    if unnamed:
        raise ValueError(
            f"{source}: category {unnamed[0]} has no 'name'; each category needs an 'id' and a "
            "'name' (the class name shown in evaluation and drawings)."
        )
    category_ids = [c.get("id") for c in categories]
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"{source} has duplicate category ids: {sorted(category_ids)}.")

    sizes: Dict[Any, Tuple[float, float]] = {}
    file_names: List[str] = []
    for image in images:
        height, width = image.get("height"), image.get("width")
        if "id" not in image or "file_name" not in image:
            raise ValueError(f"{source}: image entry {image} lacks 'id' or 'file_name'.")
        if not (_is_number(height) and _is_number(width) and height > 0 and width > 0):
            raise ValueError(
                f"{source}: image {image['id']} ({image['file_name']}) has height {height!r} "
                f"and width {width!r}; both must be positive numbers of pixels."
            )
        if image["id"] in sizes:
            raise ValueError(f"{source}: image id {image['id']} appears twice; ids must be unique.")
        sizes[image["id"]] = (float(height), float(width))
        file_names.append(image["file_name"])

    annotations = coco.get("annotations", [])  # test-set files have none
    annotation_ids = [a["id"] for a in annotations if "id" in a]
    if len(set(annotation_ids)) != len(annotation_ids):
        raise ValueError(f"{source} has duplicate annotation ids; detectron2 requires unique ids.")
    known_categories = set(category_ids)
    counts = {"images": len(images), "annotations": len(annotations)}
    counts.update(empty_boxes=0, orphan_annotations=0, crowd=0)
    for annotation in annotations:
        name = f"{source}: annotation {annotation.get('id')} (image {annotation.get('image_id')})"
        if annotation.get("category_id") not in known_categories:
            raise ValueError(
                f"{name} has category_id {annotation.get('category_id')!r}, which is not among "
                f"the file's categories {sorted(known_categories)}. Add the category to "
                "'categories' or fix the annotation."
            )
        if annotation.get("ignore", 0):
            raise ValueError(
                f"{name} sets 'ignore', which detectron2 does not support: mark it 'iscrowd': 1 "
                "or remove it."
            )
        bbox = annotation.get("bbox")
        if not (
            isinstance(bbox, (list, tuple))
            and len(bbox) == 4
            and all(_is_number(v) and math.isfinite(v) for v in bbox)
        ):
            raise ValueError(
                f"{name} has bbox {bbox!r}; COCO boxes are [x, y, width, height], 4 finite "
                "numbers in absolute pixels. Fix or remove the annotation."
            )
        x, y, w, h = bbox
        if w < 0 or h < 0:
            raise ValueError(
                f"{name} has bbox {bbox} with a negative width or height; COCO boxes are "
                "[x, y, width, height] (is it [x0, y0, x1, y1]?). Fix or remove the annotation."
            )
        counts["crowd"] += bool(annotation.get("iscrowd", 0))
        if annotation.get("image_id") not in sizes:
            counts["orphan_annotations"] += 1
            continue
        height, width = sizes[annotation["image_id"]]
        margin_x, margin_y = 0.05 * width + 2, 0.05 * height + 2
        if x < -margin_x or y < -margin_y or x + w > width + margin_x or y + h > height + margin_y:
            raise ValueError(
                f"{name} has bbox {bbox}, outside its {width:g} x {height:g} (width x height) "
                "image by more than 5% of the image side. Are the boxes [x0, y0, x1, y1] instead "
                "of COCO's [x, y, width, height], or for another image size?"
            )
        if w == 0 or h == 0:
            counts["empty_boxes"] += 1

    if image_root is not None:
        image_root = os.fspath(image_root)
        missing = [f for f in file_names if not os.path.isfile(os.path.join(image_root, f))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(file_names)} images of {source} are missing under "
                f"{image_root}, e.g. {missing[:3]}. Is the image folder the one that goes with "
                "this JSON, and is the download or extraction complete?"
            )
    return counts


def read_coco_json(json_file: PathLike, source: Optional[str] = None) -> Dict[str, Any]:
    """Parses a COCO JSON file; fails naming it when it is empty, not JSON or not an object.

    Args:
        json_file: an existing file.
        source: how to name the file in error messages; default its path.
    """
    json_file = os.fspath(json_file)
    source = source or json_file
    if os.path.getsize(json_file) == 0:
        raise ValueError(
            f"{source} is empty (0 bytes): the export or download stopped before writing it. "
            "Write it again."
        )
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except ValueError as e:
        raise ValueError(
            f"{source} is not valid JSON ({e}): probably cut short. Download or generate it again."
        ) from e
    if not isinstance(coco, dict):
        raise ValueError(f"{source} holds a {type(coco).__name__}, not a COCO JSON object.")
    return coco


def _check_json_file(json_file: str, image_root: str) -> Dict[str, int]:
    # A separate function, so the parsed JSON is freed before detectron2 parses it again.
    return check_coco_dataset(read_coco_json(json_file), image_root, source=json_file)


def load_coco_json_checked(
    json_file: PathLike, image_root: PathLike, dataset_name: Optional[str] = None
) -> List[Dict]:
    """detectron2's ``load_coco_json``, after :func:`check_coco_dataset`.

    Zero-width or zero-height boxes are skipped, with one warning giving their number. The JSON
    is parsed twice (once here, once by detectron2); for COCO train2017 that adds ~10 s once per
    process, the price of not re-implementing detectron2's loader.

    Args:
        json_file: the COCO instances JSON.
        image_root: the folder of its images.
        dataset_name: as for ``load_coco_json``: when given, sets ``thing_classes`` and the
            category id mapping in the dataset's metadata.

    Returns:
        list[dict]: detectron2's standard dataset dicts.

    Raises:
        FileNotFoundError: the JSON, the image folder or some image files are missing; the
            message says how ``$DETECTRON2_DATASETS`` is used.
        ValueError: malformed content (see :func:`check_coco_dataset`).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise _missing_path_error("annotation file", json_file)
    if not os.path.isdir(image_root):
        raise _missing_path_error("image folder", image_root)
    counts = _check_json_file(json_file, image_root)
    dataset_dicts = load_coco_json(json_file, image_root, dataset_name)
    if counts["empty_boxes"]:
        for record in dataset_dicts:
            record["annotations"] = [
                a for a in record["annotations"] if a["bbox"][2] > 0 and a["bbox"][3] > 0
            ]
        logger.warning(
            f"{json_file}: skipped {counts['empty_boxes']} annotations whose box has zero width "
            "or height."
        )
    return dataset_dicts


def _register(name: str, loader: Callable[[], List[Dict]], metadata: Dict[str, Any]) -> None:
    """Registers ``name``, replacing an earlier registration (and its metadata) of that name."""
    # detectron2 refuses to register a name twice, and metadata values cannot change once set.
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_coco_checked(
    name: str, metadata: Mapping[str, Any], json_file: PathLike, image_root: PathLike
) -> None:
    """Like detectron2's ``register_coco_instances``, but loads with :func:`load_coco_json_checked`.

    Registering a name again replaces the earlier registration, metadata included (so pass, e.g.,
    ``_get_builtin_metadata("coco")`` when replacing a builtin COCO split and its colours matter).

    Args:
        name: the dataset name, e.g. ``"coco_2017_train"``.
        metadata: extra metadata, e.g. ``{"thing_classes": [...]}``; may be empty.
        json_file: the COCO instances JSON.
        image_root: the folder of its images.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    _register(
        name,
        lambda: load_coco_json_checked(json_file, image_root, name),
        {"evaluator_type": "coco", **metadata, "json_file": json_file, "image_root": image_root},
    )


def register_shapes(
    root: Optional[PathLike] = None, *, names: Tuple[str, str] = SHAPES_DATASETS, **generate_kwargs
) -> Tuple[str, str]:
    """Registers ``shapes_train`` and ``shapes_val``; loading either generates the dataset first.

    The metadata (``thing_classes``, ``json_file``, ``evaluator_type="coco"``) is there at once,
    but the JSON files only after the first load: build the data loader before a
    ``COCOEvaluator``, which reads ``json_file`` when constructed (detectron2's
    ``DefaultTrainer.test`` does), or call :func:`generate_shapes_dataset` yourself.

    Args:
        root: the dataset folder; default :func:`default_shapes_root`, resolved now.
        names: the (train, val) names to register.
        generate_kwargs: passed to :func:`generate_shapes_dataset`, e.g. ``num_train=50``.

    Returns:
        the registered names, ``names``.
    """
    root = os.path.abspath(os.fspath(root) if root is not None else default_shapes_root())
    classes = dataset_classes(generate_kwargs.get("content", "shapes"))
    # Misspelt keywords fail here, not at the first load in the middle of training.
    inspect.signature(generate_shapes_dataset).bind(root, **generate_kwargs)
    paths = shapes_dataset_paths(root)
    for name, split in zip(names, ("train", "val")):
        json_file, image_root = paths[f"{split}_json"], paths[f"{split}_images"]

        def load(json_file=json_file, image_root=image_root, name=name) -> List[Dict]:
            generate_shapes_dataset(root, **generate_kwargs)  # returns at once if up to date
            return load_coco_json_checked(json_file, image_root, name)

        _register(
            name,
            load,
            {
                "thing_classes": list(classes),
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
                "evaluator_type": "coco",
                "json_file": json_file,
                "image_root": image_root,
                # The files appear at the first load (the trainer's early checks skip them).
                "generated_on_first_use": True,
            },
        )
    return tuple(names)


def _register_variant(
    root: Optional[PathLike], folder: str, names: Tuple[str, str], defaults: Dict[str, Any], kwargs
) -> Tuple[str, str]:
    """:func:`register_shapes` of a named variant: ``defaults`` under the caller's keywords, in
    ``$DETECTRON2_DATASETS/<folder>`` unless ``root`` is given."""
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), folder)
    return register_shapes(root, names=names, **{**defaults, **kwargs})


def register_shapes_plain(root: Optional[PathLike] = None, **generate_kwargs) -> Tuple[str, str]:
    """Registers ``shapes_plain_train`` and ``shapes_plain_val``: the shapes dataset on plain
    grey backgrounds (``background="plain"``), the main job's data, in
    ``$DETECTRON2_DATASETS/condconv_shapes_plain`` by default. See :func:`register_shapes`."""
    defaults = dict(background="plain")
    names = SHAPES_PLAIN_DATASETS
    return _register_variant(root, "condconv_shapes_plain", names, defaults, generate_kwargs)


def register_shapes_large(root: Optional[PathLike] = None, **generate_kwargs) -> Tuple[str, str]:
    """Registers ``shapes_large_train`` and ``shapes_large_val``: the plain-background shapes
    dataset eight times larger (6400 training images, so a schedule of a few thousand
    iterations sees each image about twice, and 1000 validation images, so that box AP varies
    less from one evaluation to the next), in ``$DETECTRON2_DATASETS/condconv_shapes_large`` by
    default. See :func:`register_shapes`."""
    defaults = dict(background="plain", num_train=6400, num_val=1000)
    names = SHAPES_LARGE_DATASETS
    return _register_variant(root, "condconv_shapes_large", names, defaults, generate_kwargs)


def register_shapes_single(root: Optional[PathLike] = None, **generate_kwargs) -> Tuple[str, str]:
    """Registers ``shapes_single_train`` and ``shapes_single_val``: plain backgrounds and one
    object per image, so that a per-image quantity (a router's routing) belongs to one class, as
    on ImageNet; for routing analysis (tools/analyze_routing.py). In
    ``$DETECTRON2_DATASETS/condconv_shapes_single`` by default. See :func:`register_shapes`."""
    defaults = dict(background="plain", objects_per_image=(1, 1))
    names = SHAPES_SINGLE_DATASETS
    return _register_variant(root, "condconv_shapes_single", names, defaults, generate_kwargs)


def register_digits(root: Optional[PathLike] = None, **generate_kwargs) -> Tuple[str, str]:
    """Registers ``digits_train`` and ``digits_val``: the shapes dataset's layout on plain
    backgrounds with handwritten digits (10 classes, scikit-learn's bundled scans, 14-56 px) as
    the objects, in ``$DETECTRON2_DATASETS/condconv_digits`` by default; loading either
    generates it first (needs scikit-learn). See :func:`register_shapes`."""
    defaults = dict(content="digits", object_size=(14, 56), background="plain")
    return _register_variant(root, "condconv_digits", DIGITS_DATASETS, defaults, generate_kwargs)


register_shapes()
register_shapes_plain()
register_shapes_large()
register_shapes_single()
register_digits()
