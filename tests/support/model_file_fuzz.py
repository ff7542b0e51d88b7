"""Random model files for the loader's property tests: small valid models built without training, corruptions of
their files, and a script that tries random corruptions in its own process.

``python -m tests.support.model_file_fuzz FOLDER [EXAMPLES]`` saves one model of each kind under FOLDER, then lets
hypothesis corrupt copies of them (truncation, flipped bytes, tensors of the wrong shape or dtype, negative and
out-of-range indices, NaN and infinities, meta.json values of the wrong type), each with its checksum rewritten or
not. Every corrupted copy must either be refused with a one-line CorruptArtifactError or load into a model whose
recommendations, fold-in and similar films run and render as strict JSON. Exit 0 when every example held, 1 with
the falsifying example when one did not; a segfault shows as a signal to the parent
(tests/artifacts/test_model_files_props.py).
The examples are the same on every run; ``RECAE_FUZZ_RANDOM=1`` draws new ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recae.artifacts.model_files import META_FILE, WEIGHTS_FILE, file_record, read_tensors
from recae.artifacts.trained_model import TrainedModel
from recae.models.build import build_model, model_config
from recae.models.names import Orientation
from recae.models.rankers import EaseRanker
from recae.models.side_part import SidePart
from recae.models.svd_part import SvdPart
from recae.store.matrix import IdIndex, RatingMatrix

#: Model kinds each run saves and corrupts: (name, orientation, ranker, svd, partner).
KINDS: tuple[tuple[str, str, bool, bool, bool], ...] = (
    ("stacked", "item", True, True, True),
    ("denoising", "user", True, False, False),
    ("sparse", "item", False, True, False),
    ("rbm", "item", True, False, False),
)


def random_model(seed: int, n_users: int = 12, n_movies: int = 9, *, name: str = "stacked",
                 orientation: str = "item", hidden: tuple[int, ...] = (5,), ranker: bool = True,
                 svd: bool = False, partner: bool = False, ranker_items: int | None = None,
                 side: bool = False) -> TrainedModel:
    """A small, valid, untrained model with random weights on random ratings (ids 3, 6, ... and 2, 4, ...)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mask = rng.random((n_users, n_movies)) < 0.4
    mask[np.arange(n_users), rng.integers(0, n_movies, n_users)] = True  # every user rated something
    values = np.where(mask, rng.integers(2, 11, (n_users, n_movies)) / 2.0, 0.0).astype(np.float32)
    csr = sp.csr_matrix(values)
    csr.sort_indices()
    index = IdIndex(np.arange(1, n_users + 1, dtype=np.int64) * 3, np.arange(1, n_movies + 1, dtype=np.int64) * 2)
    inputs = RatingMatrix(csr=csr, timestamps=np.zeros(csr.nnz, np.int64), index=index)

    def module(orient: str) -> Any:
        levels = {"rating_levels": [float(v) for v in np.unique(csr.data)]} if name == "rbm" else {}
        config = model_config(name, orientation=orient, hidden=hidden, **levels)
        n_units = n_users if config.orientation is Orientation.ITEM else n_movies
        return build_model(config, n_units, n_units).eval()

    main = module(orientation)
    other = None
    if partner:
        part = module("user" if orientation == "item" else "item")
        other = TrainedModel(module=part, model_config=part.config, inputs=inputs, rating_scale=(1.0, 5.0))
    ease = None
    if ranker:
        k = n_movies if ranker_items is None else ranker_items
        items = np.sort(rng.choice(n_movies, size=k, replace=False)).astype(np.int64)
        weights = rng.normal(0, 0.3, (k, k)).astype(np.float32)
        np.fill_diagonal(weights, 0.0)
        ease = EaseRanker(items=items, weights=weights, n_movies=n_movies, lam=float(rng.uniform(1, 100)),
                          input=str(rng.choice(["value", "binary"])), rating_max=5.0)
    part_svd, mix = None, ()
    if svd:
        rank = 2
        part_svd = SvdPart(mu=3.5, user_bias=rng.normal(0, 0.3, n_users), item_bias=rng.normal(0, 0.3, n_movies),
                           user_factors=rng.normal(0, 0.3, (n_users, rank)),
                           item_factors=rng.normal(0, 0.3, (n_movies, rank)), scale=(1.0, 5.0), ridge=1.0,
                           bias_ridge=1.0)
        mix = tuple(float(w) for w in rng.uniform(0.1, 0.5, 4 if partner else 3))
    part_side = None
    if svd and side:  # genres and eras: 3 groups, each film in one or two
        groups = (rng.random((n_movies, 3)) < 0.5).astype(np.float32)
        groups[np.arange(n_movies), rng.integers(0, 3, n_movies)] = 1.0
        part_side = SidePart(mu=3.5, item_bias=rng.normal(0, 0.3, n_movies), bias_ridge=5.0,
                             user_affinity=rng.normal(0, 0.3, (n_users, 3)), groups=groups,
                             names=("Comedy", "Drama", "era:1990-1994"))
        mix = (*mix[:-1], 0.3, mix[-1])
    return TrainedModel(module=main, model_config=main.config, inputs=inputs, rating_scale=(1.0, 5.0),
                        partner=other, blend_weight=float(rng.uniform(0.2, 1.0)) if partner else 1.0,
                        svd=part_svd, side=part_side, mix_weights=mix, ranker=ease)


def rewrite_checksum(folder: Path) -> None:
    """Make meta.json's record match the weights as they are now (what a tamperer does)."""
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta["files"][WEIGHTS_FILE] = file_record(folder / WEIGHTS_FILE)
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")


def rewrite_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights file by ``tensors`` and rewrite the checksum to match."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    rewrite_checksum(folder)


def rewrite_meta(folder: Path, meta: Any) -> None:
    """Replace meta.json by ``meta`` (NaN written as the non-standard literal Python's json reads back)."""
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")


def exercise(trained: TrainedModel) -> str:
    """Use a loaded model the way serving does and render the results as strict JSON (raises on NaN)."""
    from recae.cli.output import render
    from recae.serving.foldin import fold_in
    from recae.serving.similar import similar_movies

    index = trained.index
    rows = np.arange(index.n_users)
    records: list[dict[str, Any]] = []
    scores = trained.score_rows(rows)
    ranks = trained.rank_rows(rows)
    predicted, ranked = fold_in(trained, {int(index.movie_ids[0]): 5.0, int(index.movie_ids[-1]): 1.0})
    for col in np.argsort(-ranked, kind="stable")[:3]:
        records.append({"movie_id": int(index.movie_ids[col]), "predicted_rating": float(predicted[col]),
                        "score": float(ranked[col])})
    records.extend({"movie_id": s.movie_id, "similarity": s.similarity}
                   for s in similar_movies(trained, int(index.movie_ids[0]), 3))
    records.append({"mean_score": float(scores.mean()), "mean_rank": float(ranks.mean())})
    text = render(records, "json")
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} in JSON output")))
    return text


def _corrupt_tensor(tensors: dict[str, torch.Tensor], key: str, how: str, value: int, where: float) -> None:
    tensor = tensors[key]
    flat = tensor.reshape(-1).clone()
    pos = min(int(where * flat.numel()), max(flat.numel() - 1, 0))
    if how == "value" and flat.numel():
        flat[pos] = value if not tensor.is_floating_point() else float(value)
        tensors[key] = flat.reshape(tensor.shape)
    elif how in ("nan", "inf", "-inf") and flat.numel():
        if tensor.is_floating_point():
            flat[pos] = float(how)
            tensors[key] = flat.reshape(tensor.shape)
        else:
            tensors[key] = flat.to(torch.float32).reshape(tensor.shape)  # an index array of floats
    elif how == "shorter" and flat.numel():
        tensors[key] = flat[:-1]
    elif how == "longer":
        tensors[key] = torch.cat([flat, flat[:1] if flat.numel() else torch.zeros(1, dtype=flat.dtype)])
    elif how == "dtype":
        tensors[key] = tensor.to(torch.float64 if not tensor.is_floating_point() or tensor.dtype != torch.float64
                                 else torch.int32)
    elif how == "drop":
        del tensors[key]
    elif how == "extra":
        tensors[f"{key}.extra"] = tensor.clone()


def _bad_value(kind: int) -> Any:
    return [None, True, "x", [], {}, float("nan"), float("inf"), -1, 1e300, [1, 2, 3], {"a": 1}, 0.5][kind % 12]


def _set_path(meta: Any, path: list[str], value: Any, delete: bool) -> None:
    node = meta
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def meta_paths(meta: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of meta.json's objects (lists are replaced whole, not walked)."""
    paths = []
    if isinstance(meta, dict):
        for key, value in meta.items():
            paths.append((*prefix, key))
            if key not in ("history", "train_config"):  # large and read leniently; their top is still tried
                paths.extend(meta_paths(value, (*prefix, key)))
    return paths


def main(base: Path, examples: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from recae.artifacts.model_files import load_model, save_model
    from recae.errors import CorruptArtifactError

    sources = []
    for i, (name, orientation, ranker, svd, partner) in enumerate(KINDS):
        folder = base / f"kind{i}"
        save_model(random_model(i, name=name, orientation=orientation, ranker=ranker, svd=svd, partner=partner,
                                ranker_items=6 if i == 2 else None, side=i == 0), folder, version=f"kind{i}")
        exercise(load_model(folder))  # the uncorrupted copy loads and serves
        sources.append(folder)
    outcomes = {"refused": 0, "loaded": 0}
    how = st.sampled_from(["value", "nan", "inf", "-inf", "shorter", "longer", "dtype", "drop", "extra"])
    corruption = st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1), st.booleans()),
        st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1,
                                            max_size=4), st.booleans()),
        st.tuples(st.just("tensor"), st.integers(0, 99), how, st.integers(-2**31, 2**31 - 1), st.floats(0, 1)),
        st.tuples(st.just("meta"), st.integers(0, 10**6), st.integers(0, 11), st.booleans()),
    )
    scratch = Path(tempfile.mkdtemp(dir=base))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=not os.environ.get("RECAE_FUZZ_RANDOM"),
              suppress_health_check=list(HealthCheck))
    @given(source=st.sampled_from(sources), change=corruption)
    def corrupted_files_are_refused_in_one_line_or_serve(source: Path, change: tuple[Any, ...]) -> None:
        folder = scratch / "copy"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        weights = folder / WEIGHTS_FILE
        kind = change[0]
        if kind == "truncate":
            data = weights.read_bytes()
            weights.write_bytes(data[: int(change[1] * (len(data) - 1))])
            if change[2]:
                rewrite_checksum(folder)
        elif kind == "flip":
            data = bytearray(weights.read_bytes())
            for where, mask in change[1]:
                data[min(int(where * len(data)), len(data) - 1)] ^= mask
            weights.write_bytes(bytes(data))
            if change[2]:
                rewrite_checksum(folder)
        elif kind == "tensor":
            tensors = read_tensors(weights)
            keys = sorted(tensors)
            _corrupt_tensor(tensors, keys[change[1] % len(keys)], change[2], change[3], change[4])
            rewrite_tensors(folder, tensors)
        else:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            paths = meta_paths(meta)
            _set_path(meta, list(paths[change[1] % len(paths)]), _bad_value(change[2]), change[3])
            rewrite_meta(folder, meta)
        try:
            trained = load_model(folder)
        except CorruptArtifactError as err:
            assert "\n" not in str(err) and str(err) and err.exit_code == 1, f"not one line, exit 1: {err!r}"
            outcomes["refused"] += 1
            return
        exercise(trained)
        outcomes["loaded"] += 1

    corrupted_files_are_refused_in_one_line_or_serve()
    print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("RECAE_FUZZ_EXAMPLES", "150"))
    sys.exit(main(target, count))
