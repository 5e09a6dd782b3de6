"""The images a routing analysis runs over: a registered detectron2 dataset, and the classes
each image holds. Needs detectron2 (its dataset catalog)."""

from typing import List, Optional, Set, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .summary import RoutingAnalysisError

__all__ = ["image_classes", "load_records"]


def load_records(name: str, max_images: Optional[int] = None) -> Tuple[List[dict], List[str]]:
    """The first ``max_images`` records of a registered dataset, and its class names.

    Args:
        name: a dataset registered with detectron2's ``DatasetCatalog``.
        max_images: how many records; None for all.

    Returns:
        ``(records, class_names)``: the class names are the dataset's ``thing_classes``, or
        ``class0``, ``class1``, ... up to the largest category id when it has none.

    Raises:
        RoutingAnalysisError: a dataset that is not registered (naming the bundled ones) or
            has no images.
    """
    registered = DatasetCatalog.list()
    if name not in registered:
        shapes = sorted(n for n in registered if n.startswith("shapes"))
        raise RoutingAnalysisError(
            f"dataset {name!r} is not registered. The bundled shapes datasets: {shapes}; other "
            "datasets must be registered with detectron2 (e.g. register_coco_instances) by code "
            "that runs before this tool, or pick one with --dataset."
        )
    records = DatasetCatalog.get(name)
    if max_images is not None:
        records = records[:max_images]
    if not records:
        raise RoutingAnalysisError(f"dataset {name!r} has no images: nothing to analyse")
    meta = MetadataCatalog.get(name)
    classes = list(meta.get("thing_classes", []))
    if not classes:
        top = max((a["category_id"] for r in records for a in r.get("annotations", [])), default=-1)
        classes = [f"class{i}" for i in range(top + 1)]
    return records, classes


def image_classes(record: dict, num_classes: int) -> Set[int]:
    """The classes (contiguous ids) with at least one annotation in the image, crowd regions
    included.

    Raises:
        RoutingAnalysisError: an id outside ``0 .. num_classes - 1``.
    """
    classes = {int(a["category_id"]) for a in record.get("annotations", [])}
    bad = sorted(c for c in classes if not 0 <= c < num_classes)
    if bad:
        raise RoutingAnalysisError(
            f"{record.get('file_name')}: category ids {bad} outside 0..{num_classes - 1}; "
            "register the dataset with contiguous ids (detectron2's load_coco_json maps them)"
        )
    return classes
