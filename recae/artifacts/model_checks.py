"""Structure checks of a model version's files, run by the loader after the checksum and before any use.

The sha256 in meta.json catches damage, not a file whose checksum was rewritten to match (a hand edit, a bad
export, a malicious copy). Such a file must still be refused in one line rather than crash: a negative or
out-of-range sparse index reaches torch's sparse kernels unchecked and kills the process with a segfault, and a
NaN weight flows into every score (NaN in JSON output, a film "most similar" to itself, RMSE NaN). Each check
raises ValueError naming the field and what is allowed; ``recae.artifacts.model_files`` turns that into the
one-line CorruptArtifactError. Every check is vectorised numpy/torch, a few passes over each array: well under
a second for 50M weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sparse_structure(name: str, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                           shape: tuple[int, int], *, canonical: bool = True) -> None:
    """ValueError unless ``(data, indices, indptr)`` is a valid CSR matrix of ``shape`` with finite values.

    Checks: 1-d integer index arrays and a 1-d float ``data``; ``len(indptr) == rows + 1``, ``indptr[0] == 0``,
    ``indptr`` non-decreasing and ending at ``len(indices) == len(data)``; every column index in
    ``0 .. cols - 1``; every value finite; with ``canonical`` also strictly increasing columns within each row
    (sorted, no duplicate entries), as scipy's canonical CSR that every recae writer stores. O(nnz), vectorised.

    Args:
        name: what the arrays are, for the message (e.g. ``inputs`` or ``ranker``).
        shape: (rows, cols) the matrix must have.
    """
    n_rows, n_cols = (int(shape[0]), int(shape[1]))
    for label, array, kinds, what in (("indptr", indptr, "iu", "integer"), ("indices", indices, "iu", "integer"),
                                      ("data", data, "f", "float")):
        if array.ndim != 1 or array.dtype.kind not in kinds:
            raise ValueError(f"{name}: {label} must be a 1-d {what} array, got {array.dtype} of shape "
                             f"{tuple(array.shape)}")
    if indptr.size != n_rows + 1:
        raise ValueError(f"{name}: indptr has {indptr.size} entries, expected rows + 1 = {n_rows + 1}")
    if indices.size != data.size:
        raise ValueError(f"{name}: {indices.size} indices but {data.size} values")
    pointers = indptr.astype(np.int64, copy=False)
    if int(pointers[0]) != 0 or int(pointers[-1]) != indices.size:
        raise ValueError(f"{name}: indptr runs from {int(pointers[0])} to {int(pointers[-1])}, expected 0 to "
                         f"{indices.size} (the number of entries)")
    if n_rows and bool((pointers[1:] < pointers[:-1]).any()):
        raise ValueError(f"{name}: indptr decreases (index pointers must be non-decreasing)")
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_cols:
            bad = low if low < 0 else high
            raise ValueError(f"{name}: column index {bad} is outside 0..{n_cols - 1}")
        if not _finite(data):
            raise ValueError(f"{name}: data holds non-finite values (NaN or infinity)")
    if canonical and indices.size > 1:
        increasing = indices[1:] > indices[:-1]  # (nnz - 1,): entry k+1 after entry k
        starts = pointers[1:-1]
        increasing[starts[(starts > 0) & (starts < indices.size)] - 1] = True  # a new row may start anywhere
        if not bool(increasing.all()):
            raise ValueError(f"{name}: column indices within a row are unsorted or repeated")


def as_array(tensor: Any) -> np.ndarray:
    """A numpy array, or a CPU torch tensor's view as one (bfloat16, which numpy lacks, widened to float32)."""
    if isinstance(tensor, np.ndarray):
        return tensor
    return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()


def check_finite(tensors: Mapping[str, Any]) -> None:
    """ValueError naming the first floating tensor with a NaN or an infinity (no weight of a model is either);
    numpy arrays or torch tensors."""
    for key, tensor in tensors.items():
        array = as_array(tensor)
        if array.dtype.kind == "f" and array.size and not _finite(array):
            raise ValueError(f"tensor {key} holds non-finite values (NaN or infinity)")


def _finite(array: np.ndarray) -> bool:
    """A NaN or an infinity makes the sum non-finite: one pass and no temporary (about 20x faster than
    ``isfinite(x).all()``: 17 ms for 50M weights); only a sum that is not finite (or overflowed) pays for the
    element-wise test. numpy's single-threaded sum: torch's threaded one waits on its pool on a busy machine."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum only sends us to the exact test
        total = array.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(array).all())


def check_dtypes(tensors: Mapping[str, np.ndarray], expected: Mapping[str, type]) -> None:
    """ValueError naming the first array of ``expected`` stored with another numpy dtype (absent ones are left to
    the caller): a float64 rating or an int weight would load, then fail deep inside a matmul."""
    for key, dtype in expected.items():
        if key in tensors and tensors[key].dtype != np.dtype(dtype):
            raise ValueError(f"tensor {key} is {tensors[key].dtype}, expected {np.dtype(dtype)}")


def check_ids(name: str, ids: np.ndarray, n_units: int) -> None:
    """ValueError unless ``ids`` is a 1-d integer array of distinct positions in ``0 .. n_units - 1``."""
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-d integer array, got {ids.dtype} of shape {tuple(ids.shape)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_units):
        raise ValueError(f"{name} holds a position outside 0..{n_units - 1}")
    if ids.size > 1 and np.unique(ids).size != ids.size:
        raise ValueError(f"{name} holds repeated positions")


def _number(meta: Mapping[str, Any], key: str, where: str, *, low: float | None = None,
            high: float | None = None) -> float:
    """meta[key] as a finite float (JSON booleans and strings refused), within [low, high] when given."""
    value = meta.get(key) if isinstance(meta, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}{key} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}{key} is {value!r}, outside [{low}, {high}]")
    return float(value)


def _numbers(value: Any, label: str, count: int | None = None) -> list[float]:
    if not isinstance(value, list) or (count is not None and len(value) != count):
        raise ValueError(f"{label} must be a list of {count or 'some'} numbers, got {value!r}")
    return [_number({label: v}, label, "") for v in value]


def _of_type(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool) -> Any:
    value = meta.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{key} must be {'a ' if required else 'null or a '}{names}, got {type(value).__name__}")
    return value


#: meta.json's keys the loader reads: required ones, and optional ones (absent or null allowed).
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "version": str, "model": str, "model_config": dict, "index": dict, "rating_scale": list,
    "files": dict}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "train_config": dict, "split": dict, "metrics": dict, "history": list, "partner": dict, "ranker": dict,
    "svd": dict, "tune": dict, "versions": dict, "created_at": str, "data_fingerprint": str,
    "inputs_fingerprint": str}


def check_meta(meta: Any, weights_file: str, ranker_inputs: tuple[str, ...]) -> None:
    """ValueError unless meta.json has every key the loader reads, each of its JSON type and a known value.

    Types and ranges only (finite numbers, lists of integer ids, a sha256 record of ``weights_file``, a known
    ranker kind and input); the settings themselves are checked by the config classes' own ``validate``.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"the top level must be an object, got {type(meta).__name__}")
    for key, kind in _REQUIRED.items():
        _of_type(meta, key, kind, required=True)
    for key, kind in _OPTIONAL.items():
        _of_type(meta, key, kind, required=False)
    record = meta["files"].get(weights_file)
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or not _SHA256.fullmatch(record["sha256"]) or isinstance(record.get("bytes"), bool)
            or not isinstance(record.get("bytes"), int) or record["bytes"] < 0):
        raise ValueError(f"files.{weights_file} must be {{sha256: 64 hex digits, bytes: a count}}, got {record!r}")
    if meta["model"] != meta["model_config"].get("name"):
        raise ValueError(f"model {meta['model']!r} differs from model_config's name "
                         f"{meta['model_config'].get('name')!r}")
    for key in ("user_ids", "movie_ids"):
        ids = meta["index"].get(key)
        if not isinstance(ids, list) or (ids and np.asarray(ids).dtype.kind not in "iu"):
            raise ValueError(f"index.{key} must be a list of integer ids")
    low, high = _numbers(meta["rating_scale"], "rating_scale", 2)
    if not -1e6 < low < high < 1e6:
        raise ValueError(f"rating_scale {meta['rating_scale']} is not [LOW, HIGH] with LOW < HIGH")
    if meta.get("partner") is not None:
        _of_type(meta["partner"], "model_config", dict, required=True)
        _number(meta["partner"], "blend_weight", "partner.", low=0.0, high=1.0)
    if meta.get("ranker") is not None:
        _check_ranker_meta(meta["ranker"], ranker_inputs)
    if meta.get("svd") is not None:
        svd = meta["svd"]
        _numbers(svd.get("weights"), "svd.weights")
        _numbers(svd.get("scale"), "svd.scale", 2)
        _number(svd, "mu", "svd.")
        _number(svd, "ridge", "svd.", low=0.0)
        _number(svd, "bias_ridge", "svd.", low=0.0)


def _check_ranker_meta(ranker: dict[str, Any], ranker_inputs: tuple[str, ...]) -> None:
    if ranker.get("kind") not in ("ease", "sparse-ease"):
        raise ValueError(f"unknown ranker kind {ranker.get('kind')!r}")
    if ranker.get("input") not in ranker_inputs:
        raise ValueError(f"ranker.input {ranker.get('input')!r} is not one of {', '.join(ranker_inputs)}")
    _of_type(ranker, "search", dict, required=False)
    _number(ranker, "lambda", "ranker.", low=0.0)
    if _number(ranker, "rating_max", "ranker.") <= 0:
        raise ValueError(f"ranker.rating_max must be positive, got {ranker['rating_max']!r}")
