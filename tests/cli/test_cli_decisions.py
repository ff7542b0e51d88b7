"""The decisions the command line used to make itself, now library functions it calls: which configuration a
run gets (``resolve``), which settings a reader refuses (``strict_settings``), which path answers ``recommend``
(``recommend_films``), whether this torchrun process reports (``is_secondary_rank``), which models ``--model``
offers (the registry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recae.artifacts.train_config import DEFAULT_MODEL, DEFAULT_PRETRAIN_EPOCHS, TrainConfig, load_config_file, resolve
from recae.cli import cli
from recae.errors import EXIT_USAGE, DataError, TrainingError
from recae.models.autoencoders import ModelConfig
from recae.models.build import MODELS, model_config
from recae.models.multvae import MultVAEConfig
from recae.settings import UnknownSettingError, strict_settings
from recae.training.distributed import is_secondary_rank


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_resolve_layers_defaults_then_the_file_then_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nname = "stacked"\nhidden = [64, 16]\n[train]\nepochs = 7\nlr = 0.01\n')
    model_cfg, train_cfg = resolve(path, {"epochs": 3, "seed": None, "orientation": "user"})
    assert model_cfg == model_config("stacked", hidden=(64, 16), orientation="user")
    assert train_cfg == TrainConfig(epochs=3, lr=0.01)
    assert resolve(path, {"name": "sparse"})[0].name == "sparse"  # a flag overrides the file's model
    assert resolve(None) == (model_config(DEFAULT_MODEL), TrainConfig())


def test_asking_for_pretraining_turns_it_on_unless_the_file_sets_its_epochs(tmp_path: Path) -> None:
    model_cfg, _ = resolve(None, {"name": "stacked", "pretrain": "rbm"})
    assert (model_cfg.pretrain, model_cfg.pretrain_epochs) == ("rbm", DEFAULT_PRETRAIN_EPOCHS)
    path = write(tmp_path, "[model]\npretrain_epochs = 2\n")
    assert resolve(path, {"name": "stacked", "pretrain": "rbm"})[0].pretrain_epochs == 2
    assert resolve(path, {"name": "stacked"})[0].pretrain == "autoencoder"


def test_resolve_validates_and_refuses_a_flag_that_names_no_setting(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="ensemble"):
        resolve(None, {"ensemble": -1})
    with pytest.raises(UnknownSettingError, match="unknown train setting 'epoch'"):
        resolve(None, {"epoch": 3})


def test_every_reader_refuses_an_unknown_setting_the_same_way(tmp_path: Path) -> None:
    for read, what in ((ModelConfig.from_json, "model"), (TrainConfig.from_json, "train"),
                       (MultVAEConfig.from_json, "Mult-VAE")):
        with pytest.raises(UnknownSettingError, match=f"unknown {what} setting 'widht'; known settings are ") as err:
            read({"widht": 3})
        assert err.value.name == "widht" and isinstance(err.value, TrainingError)
    with pytest.raises(DataError, match=r"unknown key model\.widht; known keys are activation, cd_lr"):
        load_config_file(write(tmp_path, "[model]\nwidht = 3\n"))


def test_strict_settings_names_the_first_unknown_in_sorted_order_and_copies() -> None:
    data = {"hidden": 8}
    assert strict_settings(MultVAEConfig, data, "Mult-VAE") == data
    assert strict_settings(MultVAEConfig, data, "Mult-VAE") is not data
    with pytest.raises(UnknownSettingError, match="'b'") as err:
        strict_settings(MultVAEConfig, {"z": 1, "b": 2}, "Mult-VAE")
    assert err.value.known == ("dropout", "hidden", "latent")


@pytest.mark.parametrize(("rank", "secondary"), [(None, False), ("0", False), ("1", True), ("3", True)])
def test_only_rank_zero_reports(monkeypatch: pytest.MonkeyPatch, rank: str | None, secondary: bool) -> None:
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert is_secondary_rank() is secondary


def test_model_choices_are_the_registry() -> None:
    train = cli.get_command(click.Context(cli), "train")
    assert train is not None
    option = next(p for p in train.params if p.name == "model_name")
    assert isinstance(option.type, click.Choice) and option.type.choices == tuple(MODELS)
    result = CliRunner().invoke(cli, ["train", "--model", "nope"])
    assert result.exit_code == EXIT_USAGE and "'denoising'" in result.stderr and "'rbm'" in result.stderr


def test_train_help_lists_the_models_without_loading_torch() -> None:
    """The names are a torch-free closed set (recae.models.names), so help and usage errors answer at once."""
    code = ("import sys; from click.testing import CliRunner; from recae.cli import cli; "
            "out = CliRunner().invoke(cli, ['train', '--help']).output; "
            "assert 'contractive' in out and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small published champion on planted ratings (tests/support/serving.py), and its engine."""
    from recae.store.db import open_store
    from tests.support.serving import build_home

    home = build_home(tmp_path_factory.mktemp("decisions"))
    engine = open_store(home.url)
    yield engine, home.path / "models"
    engine.dispose()


def test_recommend_films_answers_from_the_list_when_it_can_else_with_the_model(served) -> None:  # type: ignore[no-untyped-def]
    from recae.serving.recommend import Filters, recommend_films, recommend_from_store, recommend_live

    engine, models_dir = served
    precomputed = recommend_from_store(engine, 7, 5)
    assert precomputed and recommend_films(engine, 7, {}, 5, models_dir=models_dir) == precomputed
    fresh = {1: 5.0, 2: 1.0}
    live = recommend_live(engine, 7, fresh, 5, models_dir=models_dir)
    assert recommend_films(engine, 7, fresh, 5, models_dir=models_dir) == live
    assert {1, 2}.isdisjoint(r.movie_id for r in live)
    new_user = recommend_films(engine, None, fresh, 5, models_dir=models_dir)
    assert new_user == recommend_live(engine, None, fresh, 5, models_dir=models_dir) and len(new_user) == 5
    many = Filters(genre="Drama")  # the precomputed list cannot fill 40 Drama films: the model ranks them all
    assert recommend_from_store(engine, 7, 40, many) is None
    assert recommend_films(engine, 7, {}, 40, many, models_dir=models_dir) == recommend_live(
        engine, 7, {}, 40, many, models_dir=models_dir)
    with pytest.raises(ValueError, match="user id or fresh ratings"):
        recommend_films(engine, None, {}, 5)
