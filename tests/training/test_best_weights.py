"""The best epoch's weights kept in a file for large networks: the same weights as in memory, resumable, and a
checkpoint's copy never changed by later epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recae.errors import TrainingError
from recae.models.build import model_config
from recae.models.batches import iterate_batches
from recae.store.matrix import RatingMatrix
from recae.artifacts.train_config import TrainConfig
from recae.training import best_weights, checkpoint
from recae.training.best_weights import BestFile, BestKeeper
from recae.training.checkpoint import BEST_LINK_PREFIX, CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from recae.training.train import fit
from tests.support.synthetic import planted_low_rank

SETTINGS = TrainConfig(ensemble=1, weight_decay_grid=(), epochs=14, lr=1e-1, weight_decay=0.0, patience=100,
                       batch_ratings=300, seed=3, deterministic=True, threads=1)


@pytest.fixture(scope="module")
def small() -> tuple[RatingMatrix, RatingMatrix]:
    matrix = planted_low_rank(n_users=80, n_movies=50, seed=11).observed
    keep = np.random.default_rng(0).random(matrix.nnz) >= 0.1
    return matrix.subset(keep), matrix.subset(~keep)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(expected: torch.nn.Module, got: torch.nn.Module) -> None:
    """Exact: the same arithmetic on the same machine, only the best copy's home differs."""
    for name, tensor in weights(expected).items():
        assert torch.equal(tensor, weights(got)[name]), name


def test_a_best_kept_in_a_file_restores_the_same_weights_as_one_in_memory(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    fit_part, val_part = small
    config = model_config(hidden=(32,))
    in_memory = fit(fit_part, val_part, config, SETTINGS)
    assert in_memory.best_epoch < in_memory.epochs_run  # later epochs were worse: the restore matters
    monkeypatch.setattr(best_weights, "BEST_IN_MEMORY_BYTES", 0)
    on_disk = fit(fit_part, val_part, config, SETTINGS, run_dir=tmp_path)
    assert (tmp_path / "best.safetensors").is_file()
    assert on_disk.best_epoch == in_memory.best_epoch
    assert_same_weights(in_memory.module, on_disk.module)
    without_folder = fit(fit_part, val_part, config, SETTINGS)  # a temporary folder, removed afterwards
    assert_same_weights(in_memory.module, without_folder.module)


@pytest.mark.faults
def test_a_run_with_its_best_in_a_file_resumes_to_the_same_weights(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    fit_part, val_part = small
    config = model_config(hidden=(32,))
    straight = fit(fit_part, val_part, config, SETTINGS)
    monkeypatch.setattr(best_weights, "BEST_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 0.0)
    run_dir = tmp_path / "run"
    fit(fit_part, val_part, config, SETTINGS, run_dir=run_dir, stop_after=straight.best_epoch - 2)
    tensors, progress, _, best = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert not any(name.startswith("best/") for name in tensors)  # not embedded: linked
    assert best is not None and best.path.name == f"{BEST_LINK_PREFIX}{progress['epoch']}.safetensors"
    assert [p.name for p in run_dir.glob(f"{BEST_LINK_PREFIX}*")] == [best.path.name]  # older links removed
    resumed = fit(fit_part, val_part, config, SETTINGS, run_dir=run_dir, resume=True)
    assert resumed.best_epoch == straight.best_epoch and resumed.epochs_run == straight.epochs_run
    assert_same_weights(straight.module, resumed.module)


def test_a_later_best_never_changes_the_file_a_checkpoint_names(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(module.parameters())
    keeper = BestKeeper(module, tmp_path)
    first = keeper.snapshot()
    save_checkpoint(tmp_path / CHECKPOINT_FILE, module, first, optimizer, {"epoch": 1})
    kept = weights(module)
    with torch.no_grad():
        module.weight.add_(1.0)
    keeper.snapshot()  # a later improving epoch, before the next checkpoint
    _, _, _, named = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert named is not None
    restored = torch.nn.Linear(4, 3)
    BestKeeper(restored, None).restore(named)
    assert torch.equal(restored.weight, kept["weight"])
    assert not torch.equal(restored.weight, module.weight)


def test_a_checkpoint_whose_best_file_is_gone_is_a_one_line_error(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 3)
    best = BestKeeper(module, tmp_path).snapshot()
    save_checkpoint(tmp_path / CHECKPOINT_FILE, module, best, torch.optim.Adam(module.parameters()), {"epoch": 2})
    (tmp_path / f"{BEST_LINK_PREFIX}2.safetensors").unlink()
    with pytest.raises(TrainingError, match="unreadable.*best weights") as raised:
        load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert "\n" not in str(raised.value)


def test_a_keeper_adopts_a_best_of_the_other_kind(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 3)
    on_disk = BestKeeper(module, tmp_path).snapshot()
    assert isinstance(on_disk, BestFile)
    in_memory = BestKeeper(torch.nn.Linear(4, 3), None).adopt(on_disk)  # a checkpoint from a disk-keeping run
    assert isinstance(in_memory, dict) and torch.equal(in_memory["weight"], module.weight)
    (tmp_path / "other").mkdir()
    back = BestKeeper(torch.nn.Linear(4, 3), tmp_path / "other").adopt(in_memory)  # from a memory-keeping run
    assert isinstance(back, BestFile) and back.path.is_file()


def test_prediction_batches_bound_the_input_ratings_they_read() -> None:
    """A vector with one held-out entry still reads all its inputs: counting only targets put every item of the
    ML-32M-shaped training set in one validation batch."""
    rng = np.random.default_rng(0)
    inputs = sp.random(200, 300, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    targets = sp.random(200, 300, density=0.005, format="csr", random_state=rng, dtype=np.float32)
    budget = 500
    batches = list(iterate_batches(inputs, targets, budget, seed=0, epoch=0, shuffle=False, count_inputs=True))
    per_row = np.diff(inputs.indptr) + np.diff(targets.indptr)
    assert all(per_row[b.rows].sum() <= max(budget, per_row[b.rows].max()) for b in batches)
    assert sorted(np.concatenate([b.rows for b in batches]).tolist()) == list(range(200))
    assert len(list(iterate_batches(inputs, targets, budget, seed=0, epoch=0, shuffle=False))) < len(batches)


def test_the_memory_estimate_counts_one_copy_fewer_when_the_best_waits_in_a_file(
    small, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    from recae.training.memory import network_parameters, network_peak_bytes

    fit_part, _ = small
    config, settings = model_config(hidden=(64,)), TrainConfig(partner_members=0, ensemble=1)
    in_memory, _ = network_peak_bytes(fit_part, config, settings)
    monkeypatch.setattr(best_weights, "BEST_IN_MEMORY_BYTES", 0)
    on_disk, _ = network_peak_bytes(fit_part, config, settings)
    assert in_memory - on_disk == 4 * network_parameters(fit_part.shape[0], (64,))
