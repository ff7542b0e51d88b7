"""RatingMatrix rows (user orientation) or columns (item orientation) -> sparse torch batches.

A batch holds whole vectors: every observed rating of each vector it contains, as a CSR block plus the
transposed pattern, so that both ``X @ W`` and its gradient ``X^T @ G`` are sparse products whose cost follows the
number of ratings. Batches are cut by a budget of ratings rather than of vectors, so time and memory per step are
bounded whatever the shape of the data. The shuffle is seeded by (seed, epoch), so a resumed run sees the same
batches; no vector is ever dropped (the last, partial batch is kept).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recae.models.vectors import oriented_csr  # noqa: F401 - handed on: batches' callers read it here


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on stable ops (mm, sampled_addmm)
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass(frozen=True, eq=False)
class SparseRows:
    """A block of ``n_rows`` sparse vectors over ``n_cols`` units, in CSR order, with its transposed pattern."""

    crow: Tensor  # (n_rows + 1,) int64 CSR row pointers
    col: Tensor  # (nnz,) int64 unit of each entry
    values: Tensor  # (nnz,) float32 ratings
    n_cols: int
    crow_t: Tensor  # (n_cols + 1,) int64 row pointers of the transpose
    row_t: Tensor  # (nnz,) int64 batch position of each entry, in column-major order
    perm: Tensor  # (nnz,) int64 column-major position -> CSR position

    @property
    def n_rows(self) -> int:
        return int(self.crow.numel() - 1)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @cached_property
    def row_of(self) -> Tensor:
        """(nnz,) batch position of each entry, in CSR order."""
        counts = self.crow[1:] - self.crow[:-1]
        return torch.repeat_interleave(torch.arange(self.n_rows, device=self.crow.device), counts)

    def csr(self, values: Tensor | None = None) -> Tensor:
        """torch sparse CSR (n_rows, n_cols) with this pattern and ``values`` (default: the ratings)."""
        vals = self.values if values is None else values
        return _csr_tensor(self.crow, self.col, vals, (self.n_rows, self.n_cols))

    def csr_t(self, values: Tensor | None = None) -> Tensor:
        """torch sparse CSR (n_cols, n_rows): the transpose; ``values`` are given in CSR order."""
        vals = (self.values if values is None else values)[self.perm]
        return _csr_tensor(self.crow_t, self.row_t, vals, (self.n_cols, self.n_rows))

    def with_values(self, values: Tensor) -> SparseRows:
        """Same pattern, other values (for input corruption)."""
        return SparseRows(self.crow, self.col, values, self.n_cols, self.crow_t, self.row_t, self.perm)

    def dense(self) -> Tensor:
        """(n_rows, n_cols) dense copy: only for small data and tests."""
        out = torch.zeros(self.n_rows, self.n_cols, dtype=self.values.dtype, device=self.values.device)
        out[self.row_of, self.col] = self.values
        return out

    def to(self, device: torch.device | str) -> SparseRows:
        if self.crow.device == torch.device(device):
            return self
        return SparseRows(
            self.crow.to(device), self.col.to(device), self.values.to(device), self.n_cols,
            self.crow_t.to(device), self.row_t.to(device), self.perm.to(device),
        )


def sparse_rows(csr: sp.csr_matrix, rows: np.ndarray | None = None) -> SparseRows:
    """Take ``rows`` (all when None) of a scipy CSR matrix as a :class:`SparseRows` block, in that order."""
    block = csr if rows is None else csr[np.asarray(rows, dtype=np.int64)]
    n_rows, n_cols = block.shape
    # the transpose by scipy's O(nnz) CSR -> CSC pass over the entries' CSR positions: each column's entries in CSR
    # order, as a stable argsort of the columns gives them, at an eighth of its cost (make_batch was an eighth of
    # an ml-1m epoch)
    positions = sp.csr_matrix((np.arange(block.nnz, dtype=np.int64), block.indices, block.indptr), shape=block.shape)
    transposed = positions.tocsc()
    return SparseRows(
        crow=torch.from_numpy(np.asarray(block.indptr, dtype=np.int64)),
        col=torch.from_numpy(np.asarray(block.indices, dtype=np.int64)),
        values=torch.from_numpy(np.asarray(block.data, dtype=np.float64 if block.dtype == np.float64 else np.float32)),
        n_cols=int(n_cols),
        crow_t=torch.from_numpy(np.asarray(transposed.indptr, dtype=np.int64)),
        row_t=torch.from_numpy(np.asarray(transposed.indices, dtype=np.int64)),
        perm=torch.from_numpy(np.asarray(transposed.data, dtype=np.int64)),
    )


@dataclass(frozen=True, eq=False)
class Batch:
    """Vectors ``rows`` of the oriented matrix: the model reads ``inputs`` and is scored on ``targets``."""

    rows: np.ndarray  # (batch,) positions in the oriented matrix
    inputs: SparseRows  # (batch, n_inputs) what the encoder sees
    targets: SparseRows  # (batch, n_outputs) ratings the loss compares with

    def to(self, device: torch.device | str) -> Batch:
        inputs = self.inputs.to(device)
        return Batch(self.rows, inputs, inputs if self.targets is self.inputs else self.targets.to(device))


def batch_plan(
    row_nnz: np.ndarray, batch_ratings: int, *, seed: int, epoch: int, shuffle: bool = True,
    rows: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split ``rows`` (default: every row) into consecutive groups of at most ``batch_ratings`` ratings.

    The order is a permutation seeded by (seed, epoch) when ``shuffle``. Groups are filled greedily; a row heavier
    than the budget forms a group of its own. The last group is kept however small, so every row appears once.
    """
    order = np.arange(row_nnz.size, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if shuffle:
        order = order[np.random.default_rng([seed, epoch]).permutation(order.size)]
    budget = max(int(batch_ratings), 1)
    cuts: list[int] = []
    filled = 0
    for position, size in enumerate(np.maximum(row_nnz[order], 1).tolist()):
        if filled and filled + size > budget:
            cuts.append(position)
            filled = 0
        filled += size
    return np.split(order, cuts) if order.size else []


def iterate_batches(
    inputs: sp.csr_matrix, targets: sp.csr_matrix, batch_ratings: int, *, seed: int, epoch: int,
    shuffle: bool = True, rows: np.ndarray | None = None, count_inputs: bool = False,
) -> Iterator[Batch]:
    """Yield batches over ``rows`` of ``inputs``/``targets`` (same row space), cut by the targets' rating counts, or
    by inputs' and targets' together with ``count_inputs``: prediction at a few held-out entries per vector reads
    every input rating of the vector, and a budget of targets alone then put the whole item-oriented training set
    of ML-32M shape in one batch (1.1 GB of indices beside the network)."""
    row_nnz = np.diff(targets.indptr) + (np.diff(inputs.indptr) if count_inputs else 0)
    for group in batch_plan(row_nnz, batch_ratings, seed=seed, epoch=epoch, shuffle=shuffle, rows=rows):
        yield make_batch(inputs, targets, group)


def make_batch(inputs: sp.csr_matrix, targets: sp.csr_matrix, rows: np.ndarray | None = None) -> Batch:
    """One batch of ``rows`` (default: every row; the full batch of full-batch optimisers)."""
    chosen = np.arange(inputs.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    same = inputs is targets
    block_in = sparse_rows(inputs, None if rows is None else chosen)
    block_out = block_in if same else sparse_rows(targets, None if rows is None else chosen)
    return Batch(rows=chosen, inputs=block_in, targets=block_out)
