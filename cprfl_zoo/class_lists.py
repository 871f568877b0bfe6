"""Built-in class lists of the long-tailed multi-label benchmarks, in the official order.

The names are those the official CPRFL code encodes (underscores become spaces in the prompt).
"""

from __future__ import annotations

__all__ = ["COCO_LT_CLASSES", "VOC_LT_CLASSES", "get_class_names"]

COCO_LT_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic_light", "fire_hydrant", "stop_sign", "parking_meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports_ball", "kite",
    "baseball_bat", "baseball_glove", "skateboard", "surfboard", "tennis_racket", "bottle",
    "wine_glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot_dog", "pizza", "donut", "cake", "chair", "couch", "potted_plant",
    "bed", "dining_table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell_phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy_bear", "hair_drier", "toothbrush",
)  # fmt: skip

VOC_LT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

_BUILT_IN = {"coco-lt": COCO_LT_CLASSES, "voc-lt": VOC_LT_CLASSES}


def get_class_names(name: str) -> list[str]:
    """Return a built-in class list by name.

    Args:
        name: ``"coco-lt"`` (80 COCO classes) or ``"voc-lt"`` (20 VOC classes).

    Returns:
        The class names in the benchmark's (and the official code's) order.

    Raises:
        ValueError: For an unknown list name.
    """
    key = name.lower().replace("_", "-")
    if key not in _BUILT_IN:
        raise ValueError(f"unknown class list {name!r}; built-in lists are {sorted(_BUILT_IN)}")
    return list(_BUILT_IN[key])
