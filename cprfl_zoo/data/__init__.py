"""Multi-label image lists, the COCO-LT / VOC-LT benchmarks, and image transforms.

Every name is importable from ``cprfl_zoo.data``; the package holds one module per part:

* :mod:`cprfl_zoo.data.image_list`: :class:`MultiLabelImageList`, a dataset over a
  ``relative/path.jpg 3 17 42`` list file (the format of the long-tailed benchmarks, 0-based
  class ids), returning ``(image, target)`` with a multi-hot float target; per-class frequencies
  are counted from the list. With it the list, label-file and class-name readers, and
  :func:`create_lt_dataset`.
* :mod:`cprfl_zoo.data.lt_splits`: :func:`download_lt_split`, :func:`lt_split_path`,
  :data:`LT_BENCHMARKS`: the COCO-LT and VOC-LT splits of Wu et al. (ECCV 2020), their class
  names, where the list files and the images come from.
* :mod:`cprfl_zoo.data.images`: :func:`load_image` and :func:`to_rgb`, any image Pillow reads
  as 8-bit RGB as it is displayed (EXIF orientation, 16-bit and float pixels, transparency on
  white, the pixel limit), used by the datasets, :mod:`cprfl_zoo.predict` and the command line.
* :mod:`cprfl_zoo.data.transforms`: :func:`create_transforms`, timm's preprocessing for a model,
  or the CPRFL paper's recipe (448 px, Cutout, RandAugment).
* :mod:`cprfl_zoo.data.label_stats`: :func:`class_counts`, :func:`class_priors` and
  :func:`multi_hot_targets`: per-class statistics read from a training list's labels.
* :mod:`cprfl_zoo.data.samplers`: :class:`ClassAwareSampler` (the DB loss paper's) and
  :class:`RepeatFactorSampler` (LVIS), both deterministic per epoch and sharded across
  ``torchrun`` processes, and :func:`image_repeat_factors`.
"""

from .image_list import (
    ImageListEntries,
    MultiLabelImageList,
    create_lt_dataset,
    read_class_names,
    read_image_list,
    read_label_file,
    read_text_lines,
)
from .images import ImageReadError, load_image, to_rgb
from .label_stats import class_counts, class_priors, multi_hot_targets
from .lt_splits import (
    LT_BENCHMARKS,
    LT_SPLITS_BASE_URL,
    LTBenchmark,
    default_cache_dir,
    download_lt_split,
    get_lt_benchmark,
    lt_split_path,
)
from .samplers import ClassAwareSampler, RepeatFactorSampler, image_repeat_factors
from .transforms import RandomCutout, create_transforms

__all__ = [
    "LT_BENCHMARKS",
    "LT_SPLITS_BASE_URL",
    "ClassAwareSampler",
    "ImageListEntries",
    "ImageReadError",
    "LTBenchmark",
    "MultiLabelImageList",
    "RandomCutout",
    "RepeatFactorSampler",
    "class_counts",
    "class_priors",
    "create_lt_dataset",
    "create_transforms",
    "default_cache_dir",
    "download_lt_split",
    "get_lt_benchmark",
    "image_repeat_factors",
    "load_image",
    "lt_split_path",
    "multi_hot_targets",
    "read_class_names",
    "read_image_list",
    "read_label_file",
    "read_text_lines",
    "to_rgb",
]
