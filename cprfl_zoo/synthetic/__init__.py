"""Long-tailed multi-label canvases composed from single-label images: the one composer.

Every composed image is a square canvas cut into a ``grid x grid`` layout of cells; each object
(a single-label source image of one class) sits in its own cell, resized to a fraction of it at
a random offset, and the canvas is labelled with the classes it shows. Two front ends share the
class-frequency profile (:func:`long_tail_class_weights`), the cell geometry and the checks:

* :func:`make_digit_composites` (torch, vectorised): scikit-learn's bundled 8 x 8 handwritten
  digits, coloured and jittered over noisy dark backgrounds, classes drawn i.i.d. with
  long-tailed weights. For quick starts, smoke tests and examples that must run offline in
  seconds; training and test images come from disjoint halves of the digit pool.
  :func:`write_image_list` saves them as PNG files with an image-list file in the format of
  :class:`cprfl_zoo.data.MultiLabelImageList`. Needs scikit-learn
  (``pip install "cprfl-zoo[examples]"``).
* :func:`compose_set` / :func:`compose_rgba_set` (numpy): any single-label grayscale or RGBA
  source images (the benchmarks' Fashion-MNIST + MNIST and emoji sets) on a 2x2 grid with
  *exact* class counts: class ``c`` is on exactly ``counts[c]`` canvases
  (:func:`compose_canvases`), the training counts following :func:`long_tailed_counts`.
  Needs Pillow (for resizing).

Modules: :mod:`~cprfl_zoo.synthetic.digits` (the digit composites),
:mod:`~cprfl_zoo.synthetic.compose` (exact-count canvases of any source images) and
:mod:`~cprfl_zoo.synthetic.layout` (what they share); every name imports from
``cprfl_zoo.synthetic``.
"""

from .compose import (
    GRID,
    ComposedSet,
    SourceImages,
    compose_canvases,
    compose_rgba_set,
    compose_set,
    long_tailed_counts,
    random_background,
    render_canvas,
    render_rgba_canvas,
)
from .digits import (
    DIGIT_NAMES,
    SyntheticMultiLabelData,
    make_digit_composites,
    write_image_list,
)
from .layout import long_tail_class_weights

__all__ = [
    "DIGIT_NAMES",
    "GRID",
    "ComposedSet",
    "SourceImages",
    "SyntheticMultiLabelData",
    "compose_canvases",
    "compose_rgba_set",
    "compose_set",
    "long_tail_class_weights",
    "long_tailed_counts",
    "make_digit_composites",
    "random_background",
    "render_canvas",
    "render_rgba_canvas",
    "write_image_list",
]
