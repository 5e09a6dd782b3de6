"""A detector's predictions drawn on images (``tools/demo.py``), with detectron2's
``Visualizer``, which needs OpenCV (imported only when something is drawn)."""

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances

from condconv_det.data.images import read_image, write_image

__all__ = ["draw_image_file", "draw_instances"]


def draw_instances(image_rgb: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    """``instances`` drawn on an image by detectron2's ``Visualizer``.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        instances: detections in the image's pixels (``pred_boxes``, ``scores``,
            ``pred_classes``).
        metadata: the dataset's ``MetadataCatalog`` entry: its ``thing_classes`` name the
            classes.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    # Imported here: the Visualizer needs OpenCV, which nothing else in the project does.
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError as e:
        raise ImportError(
            f"detectron2's Visualizer needs OpenCV ({e}): pip install opencv-python-headless "
            "-c tools/env/constraints.txt"
        ) from e
    return (
        Visualizer(image_rgb, metadata, scale=1.0).draw_instance_predictions(instances).get_image()
    )


def draw_image_file(predictor, path: str, out_path: str, threshold: float, metadata) -> Instances:
    """Reads the image ``path``, runs ``predictor`` on it and writes it to ``out_path`` (at its
    own size, atomically) with the detections scoring above ``threshold`` drawn.

    Args:
        predictor: a :class:`~condconv_det.engine.predictor.Predictor` (its ``cfg`` gives
            ``INPUT.FORMAT``).
        path: the image, read as the data loaders read images
            (:func:`~condconv_det.data.read_image`).
        out_path: the drawn image; its extension chooses the format.
        threshold: detections scoring above it are drawn.
        metadata: names the classes, as in :func:`draw_instances`.

    Returns:
        the detections drawn.

    Raises:
        OSError: the image cannot be read or the drawing cannot be written.
        ValueError: an image or an output name that cannot be used.
    """
    image_format = predictor.cfg.INPUT.FORMAT
    image = read_image(path, image_format)
    instances = predictor(image)
    instances = instances[instances.scores > threshold]
    drawn = draw_instances(utils.convert_image_to_rgb(image, image_format), instances, metadata)
    write_image(out_path, drawn)
    return instances
