"""The loader's structure checks: a model file whose checksum was rewritten to match is still refused in one line
when its sparse indices, shapes, dtypes, values or meta.json are wrong (issue 30, row 5), and JSON output never
holds NaN.

Before: a negative index in the stored ratings segfaulted `recommend --rate` (exit 139); NaN weights loaded and
printed ``NaN`` in JSON, ranked a film most similar to itself and gave RMSE NaN.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recae.artifacts.model_checks import check_meta, check_sparse_structure
from recae.artifacts.model_files import META_FILE, WEIGHTS_FILE, load_model, read_tensors, save_model
from recae.cli.output import render
from recae.errors import CorruptArtifactError
from tests.support.model_file_fuzz import random_model, rewrite_meta, rewrite_tensors

ROOT = Path(__file__).resolve().parents[2]
#: A 3x4 CSR with an empty first row: rows [], [0, 2], [1, 2, 3].
INDPTR, INDICES, DATA = np.array([0, 0, 2, 5]), np.array([0, 2, 1, 2, 3], np.int32), np.ones(5, np.float32)


def test_a_valid_csr_with_empty_rows_passes() -> None:
    check_sparse_structure("m", INDPTR, INDICES, DATA, (3, 4))
    check_sparse_structure("m", np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (3, 4))
    check_sparse_structure("m", INDPTR, INDICES[[1, 0, 2, 3, 4]], DATA, (3, 4), canonical=False)  # unsorted allowed


@pytest.mark.parametrize(("indptr", "indices", "data", "message"), [
    (INDPTR, np.array([0, -1, 1, 2, 3]), DATA, "column index -1 is outside 0..3"),
    (INDPTR, np.array([0, 2, 1, 2, 4]), DATA, "column index 4 is outside 0..3"),
    (np.array([0, 3, 2, 5]), INDICES, DATA, "indptr decreases"),
    (np.array([0, 2, 5]), INDICES, DATA, "expected rows + 1 = 4"),
    (np.array([1, 1, 2, 5]), INDICES, DATA, "runs from 1 to 5"),
    (np.array([0, 0, 2, 4]), INDICES, DATA, "runs from 0 to 4"),
    (INDPTR, INDICES, DATA[:4], "5 indices but 4 values"),
    (INDPTR, INDICES, np.array([1, 1, np.nan, 1, 1], np.float32), "non-finite"),
    (INDPTR, INDICES, np.array([1, 1, 1, np.inf, 1], np.float32), "non-finite"),
    (INDPTR, np.array([0, 2, 2, 1, 3]), DATA, "unsorted or repeated"),
    (INDPTR, np.array([2, 0, 1, 2, 3]), DATA, "unsorted or repeated"),
    (INDPTR, INDICES.astype(np.float32), DATA, "indices must be a 1-d integer array"),
    (INDPTR, INDICES, DATA.astype(np.int32), "data must be a 1-d float array"),
    (INDPTR.reshape(2, 2), INDICES, DATA, "indptr must be a 1-d integer array"),
])
def test_broken_csr_structure_is_named(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                                       message: str) -> None:
    with pytest.raises(ValueError, match="m: .*" + message.replace("+", r"\+").replace("..", r"\.\.")):
        check_sparse_structure("m", indptr, indices, data, (3, 4))


def _saved(tmp_path: Path, **kwargs: Any) -> Path:
    folder = tmp_path / "v"
    save_model(random_model(0, **kwargs), folder, version="v")
    return folder


def _refused(folder: Path, fragment: str) -> str:
    with pytest.raises(CorruptArtifactError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert "\n" not in message and fragment in message, message
    return message


@pytest.mark.parametrize(("key", "change", "fragment"), [
    ("inputs/indices", lambda t: t.index_fill(0, torch.tensor([3]), -7), "column index -7 is outside"),
    ("inputs/indices", lambda t: t.index_fill(0, torch.tensor([3]), 9), "column index 9 is outside"),
    ("inputs/indptr", lambda t: t.flip(0), "indptr runs from"),
    ("inputs/data", lambda t: t.to(torch.float64), "inputs/data is float64"),
    ("model/w_in", lambda t: torch.full_like(t, float("nan")), "model/w_in holds non-finite"),
    ("model/b_out", lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "model/b_out holds non-finite"),
    ("model/w_out", lambda t: t.to(torch.float64), "model/w_out is float64"),
    ("model/w_out", lambda t: t[:-1], "model/w_out has shape"),
    ("ranker/items", lambda t: t.index_fill(0, torch.tensor([0]), -1), "ranker/items holds a position outside"),
    ("ranker/items", lambda t: t.index_fill(0, torch.tensor([1]), int(t[0])), "ranker/items holds repeated"),
    ("ranker/weights", lambda t: t[:, :-1], "ranker/weights is float32 of shape"),
    ("ranker/weights", lambda t: torch.full_like(t, float("nan")), "ranker/weights holds non-finite"),
    ("svd/item_factors", lambda t: torch.full_like(t, float("-inf")), "svd/item_factors holds non-finite"),
])
def test_tensors_with_a_rewritten_checksum_are_refused_in_one_line(tmp_path: Path, key: str, change: Any,
                                                                   fragment: str) -> None:
    folder = _saved(tmp_path, svd=True)
    tensors = read_tensors(folder / WEIGHTS_FILE)
    tensors[key] = change(tensors[key])
    rewrite_tensors(folder, tensors)
    _refused(folder, fragment)


def _meta_edit(path: str, value: Any) -> Any:
    def edit(meta: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = meta
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "fragment"), [
    ("rating_scale", [1, "5"], "rating_scale must be a finite number"),
    ("rating_scale", [5, 1], "is not [LOW, HIGH]"),
    ("rating_scale", [1, float("nan")], "must be a finite number"),
    ("index/movie_ids", [2.5, 4, 6], "index.movie_ids must be a list of integer ids"),
    ("index/user_ids", "3,6,9", "index.user_ids must be a list"),
    ("model_config", None, "model_config must be a dict"),
    ("model", "svd", "differs from model_config's name"),
    ("model_config/activation", "swish", "unknown activation 'swish'"),
    ("model_config/orientation", "diagonal", "unknown orientation"),
    ("files/weights.safetensors/sha256", "abc", "64 hex digits"),
    ("files/weights.safetensors", _DELETE, "files.weights.safetensors must be"),
    ("ranker/lambda", float("nan"), "ranker.lambda must be a finite number"),
    ("ranker/lambda", True, "ranker.lambda must be a finite number"),
    ("ranker/input", "squared", "ranker.input 'squared' is not one of value, binary"),
    ("ranker/kind", "slim", "unknown ranker kind 'slim'"),
    ("ranker/search", True, "search must be null or a dict"),
    ("svd/mu", "3.5", "svd.mu must be a finite number"),
    ("svd/weights", [1, 2], "are not 2 weights and an intercept"),
    ("partner", [], "partner must be null or a dict"),
    ("metrics", [], "metrics must be null or a dict"),
    ("version", 7, "version must be a str"),
    ("format_version", 2, "has format 2"),
])
def test_meta_json_of_the_wrong_type_or_unknown_value_is_refused_in_one_line(tmp_path: Path, path: str, value: Any,
                                                                             fragment: str) -> None:
    folder = _saved(tmp_path, svd=True)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    _meta_edit(path, value)(meta)
    rewrite_meta(folder, meta)
    _refused(folder, fragment)


def test_an_rbm_without_its_rating_levels_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = _saved(tmp_path, name="rbm")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta["model_config"]["rating_levels"] = []
    rewrite_meta(folder, meta)
    _refused(folder, "needs rating_levels")  # before: the trainer's TrainingError escaped the loader


def test_check_meta_accepts_what_save_model_writes(tmp_path: Path) -> None:
    from recae.models.rankers import RANKER_INPUTS

    for i, kwargs in enumerate(({}, {"svd": True, "partner": True}, {"orientation": "user", "ranker": False})):
        folder = tmp_path / str(i)
        meta = save_model(random_model(1, **kwargs), folder, version="v")  # type: ignore[arg-type]
        check_meta(json.loads(json.dumps(meta)), WEIGHTS_FILE, RANKER_INPUTS)
    with pytest.raises(ValueError, match="top level must be an object"):
        check_meta([], WEIGHTS_FILE, RANKER_INPUTS)


def test_json_output_never_holds_nan() -> None:
    text = render([{"a": float("nan"), "b": np.float32("inf"), "c": [1.5, -math.inf], "d": {"e": np.nan}}], "json")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == [
        {"a": None, "b": None, "c": [1.5, None], "d": {"e": None}}]


def _tamper_and_run(home: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    folder = next(f for f in (home / "models").iterdir() if not f.name.startswith("."))
    tensors = read_tensors(folder / WEIGHTS_FILE)
    if mode == "negative":
        tensors["inputs/indices"] = tensors["inputs/indices"].index_fill(0, torch.tensor([5]), -7)
    else:
        tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() and not k.startswith("inputs/")
                   else v for k, v in tensors.items()}
    rewrite_tensors(folder, tensors)
    return subprocess.run([sys.executable, "-m", "recae", "--home", str(home), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("mode", ["negative", "nan"])
def test_the_cli_refuses_a_tampered_model_instead_of_crashing_or_printing_nan(tmp_path: Path, mode: str) -> None:
    from tests.support.serving import build_home

    home = build_home(tmp_path / "home").path
    for args in (["recommend", "--rate", "5=5", "-n", "2", "--format", "json"], ["similar", "--movie", "5"]):
        done = _tamper_and_run(home, mode, *args)
        assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)  # before: -11 (segfault) or 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: model artifact") and "NaN" not in done.stdout


def test_finite_weights_whose_sum_overflows_still_pass() -> None:
    from recae.artifacts.model_checks import check_finite

    check_finite({"w": torch.full((4,), 3e38), "i": torch.arange(3)})  # the sum is inf; every weight is finite
    with pytest.raises(ValueError, match="tensor w holds non-finite"):
        check_finite({"w": torch.tensor([3e38, 3e38, float("-inf")])})
