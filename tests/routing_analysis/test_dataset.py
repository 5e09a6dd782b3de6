"""condconv_det.routing_analysis.dataset: a registered dataset's records and class names, and the
classes of an image; what cannot be analysed is refused by name."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from condconv_det.routing_analysis import RoutingAnalysisError
from condconv_det.routing_analysis.dataset import image_classes, load_records


@pytest.fixture
def registered():
    """Registers two datasets of three images, with and without class names; yields their
    names."""
    annotations = [[{"category_id": 0}, {"category_id": 2}], [], [{"category_id": 2}]]
    images = [{"file_name": f"{i}.png", "annotations": a} for i, a in enumerate(annotations)]
    names = ("routing_dataset_named", "routing_dataset_unnamed", "routing_dataset_empty")
    DatasetCatalog.register(names[0], lambda: images)
    MetadataCatalog.get(names[0]).set(thing_classes=["a", "b", "c", "d"])
    DatasetCatalog.register(names[1], lambda: images)
    DatasetCatalog.register(names[2], lambda: [])
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_records_and_class_names(registered):
    named, unnamed, _ = registered
    records, classes = load_records(named)
    assert len(records) == 3 and classes == ["a", "b", "c", "d"]
    records, classes = load_records(unnamed, max_images=2)
    assert len(records) == 2 and classes == ["class0", "class1", "class2"]  # up to the top id
    assert [image_classes(r, 3) for r in records] == [{0, 2}, set()]


def test_what_cannot_be_analysed_is_named(registered):
    _, unnamed, empty = registered
    with pytest.raises(RoutingAnalysisError, match="'routing_dataset_unamed' is not registered"):
        load_records("routing_dataset_unamed")
    with pytest.raises(RoutingAnalysisError, match="'routing_dataset_empty' has no images"):
        load_records(empty)
    with pytest.raises(RoutingAnalysisError, match=r"0.png: category ids \[2\] outside 0..1"):
        image_classes(load_records(unnamed)[0][0], 2)
