"""Column and row chunks that bound the memory of the metrics on large evaluation sets.

Every metric works on an ``(N, C)`` matrix one slice at a time, so its temporaries (sort
indices, cumulative sums, comparison masks) hold at most :data:`CHUNK_ELEMENTS` values whatever
N x C is: at 20,000 images x 10,000 classes the inputs are 0.8 GB of float32 logits, and
temporaries the size of the whole matrix would be several times that.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

__all__ = ["CHUNK_ELEMENTS", "column_chunks", "row_chunks", "sigmoid_probabilities"]

CHUNK_ELEMENTS = 1 << 21
"""Most matrix elements one chunk holds (read at every call, so tests can shrink it)."""


def _slices(length: int, width: int) -> Iterator[slice]:
    for start in range(0, length, width):
        yield slice(start, min(start + width, length))


def column_chunks(num_rows: int, num_cols: int) -> Iterator[slice]:
    """Slices of whole columns (classes), each of at most :data:`CHUNK_ELEMENTS` elements.

    Args:
        num_rows: N, the rows of the matrix.
        num_cols: C, the columns.

    Returns:
        An iterator of column slices covering ``range(num_cols)`` in order (at least one column
        per slice, however long the columns).
    """
    return _slices(num_cols, max(1, CHUNK_ELEMENTS // max(num_rows, 1)))


def row_chunks(num_rows: int, num_cols: int) -> Iterator[slice]:
    """Slices of whole rows (images), each of at most :data:`CHUNK_ELEMENTS` elements.

    Args:
        num_rows: N, the rows of the matrix.
        num_cols: C, the columns.

    Returns:
        An iterator of row slices covering ``range(num_rows)`` in order.
    """
    return _slices(num_rows, max(1, CHUNK_ELEMENTS // max(num_cols, 1)))


def sigmoid_probabilities(logits: Tensor) -> Tensor:
    """``sigmoid`` of the logits in float32, as :func:`cprfl_zoo.predict.predict` computes them.

    Calibration and evaluation compare these values with the float32 thresholds, so a threshold
    chosen on them selects exactly the samples it was chosen for. Logits above about 16.6 give
    1.0 and below about -103.3 give 0.0 (float32 saturates): such logits tie.

    Args:
        logits: Logits of any real dtype.

    Returns:
        The float32 probabilities, a new tensor.
    """
    return logits.float().sigmoid()
