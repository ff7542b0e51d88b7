"""Rating vectors and prediction patterns in scipy form: what the torch batches and the numpy forward passes
(``recae.artifacts.inference``) both read, kept torch-free so serving can build them without torch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recae.models.names import ORIENTATIONS, Orientation
from recae.store.matrix import RatingMatrix


def oriented_csr(matrix: RatingMatrix, orientation: Orientation | str) -> sp.csr_matrix:
    """The matrix whose rows are the autoencoder's input vectors.

    ``user``: the ratings as they are, (n_users, n_movies): each user's vector over movies.
    ``item``: the transpose, (n_movies, n_users): each movie's vector over users (as in I-AutoRec).
    """
    if orientation == Orientation.USER:
        csr = matrix.csr
    elif orientation == Orientation.ITEM:
        csr = matrix.csr.T.tocsr()
    else:
        raise ValueError(f"unknown orientation {orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
    csr.sort_indices()
    return csr


def pairs_csr(vectors: np.ndarray, units: np.ndarray, n_units: int) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """A CSR pattern (values 1) covering (vector, unit) pairs, for predicting at arbitrary positions.

    Returns (unique_vectors, pattern, inverse): the pattern's rows are ``unique_vectors`` in order, its entries
    the distinct pairs in CSR order, and ``values_at_entries[inverse]`` answers the pairs as given.
    """
    vectors = np.asarray(vectors, dtype=np.int64)
    units = np.asarray(units, dtype=np.int64)
    unique_vectors, position = np.unique(vectors, return_inverse=True)
    keys, inverse = np.unique(position * n_units + units, return_inverse=True)
    entry_rows, entry_units = keys // n_units, keys % n_units
    indptr = np.zeros(unique_vectors.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(entry_rows, minlength=unique_vectors.size), out=indptr[1:])
    csr = sp.csr_matrix((np.ones(keys.size, np.float32), entry_units, indptr), shape=(unique_vectors.size, n_units))
    return unique_vectors, csr, inverse.reshape(-1)
