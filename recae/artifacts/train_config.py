"""How to train: ``TrainConfig`` (every field settable in a TOML ``[train]`` table), the config file reader, and
``resolve``: the one place where defaults, a config file and command-line flags become a run's configuration.

Kept apart from the training loop so that reading or validating a configuration (the CLI, the registry reading a
version's meta.json) does not pull in the loop, checkpoints or ensembles.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from recae.errors import DataError, TrainingError
from recae.models.model_config import ModelConfig
from recae.models.rankers import RANKER_INPUTS
from recae.settings import DEVICES, UnknownSettingError, setting_names, strict_settings

OPTIMIZERS = ("adam", "adamw", "rprop", "lbfgs")
RANKERS = ("auto", "ease", "sparse-ease", "none")
AUTO_MIN_BATCH = 8192
AUTO_STEPS_PER_EPOCH = 25
#: Below this many training ratings one CPU thread trains fastest: the batches are too small to share, and on a
#: busy machine a second thread waits for a core (ml-100k u1 took 374 s with two threads beside one busy core,
#: 13 s with one).
AUTO_ONE_THREAD_BELOW = 2_000_000
#: Above this many training ratings the automatic settings (``ensemble = 0``, ``epochs = 0``) turn from accuracy to
#: time: one member, and epochs capped so that a member reads about LARGE_MEMBER_RATINGS ratings. Below it (ml-100k
#: to ML-1M and beyond) they are the settings chosen on validation: 4 members, up to 300 epochs.
LARGE_TRAIN_RATINGS = 5_000_000
#: 6 epochs at ML-32M shape: 3.5 min for the item member, 5 for the user partner on 2 cores (35 and 50 s an epoch;
#: there the synthetic carve's validation RMSE moved 0.0001 between epochs 1 and 3)
LARGE_MEMBER_RATINGS = 150_000_000
AUTO_MEMBERS, AUTO_EPOCHS, LARGE_MIN_EPOCHS = 4, 300, 5
#: Early-stopping patience when none is set (``patience = 0``): AUTO_PATIENCE, except SHORT_PATIENCE from
#: SHORT_PATIENCE_FROM training ratings up to LARGE_TRAIN_RATINGS. Why: a member's validation carve grows with the
#: data and its RMSE curve flattens out of the noise. On ml-1m (seed 0, 4 members) every member's best epoch came
#: within 9 epochs of the one before it, so patience 10 keeps all four best epochs and saves 40 of 186 epochs; on
#: ml-100k u1 (4,000-rating carves) two of four members improved again 10+ epochs after a best (0.0044 and 0.0025
#: RMSE lost at patience 10), so small data keeps 20. Above LARGE_TRAIN_RATINGS the run is sized for time (epochs
#: capped near 6) and keeps 20.
AUTO_PATIENCE, SHORT_PATIENCE, SHORT_PATIENCE_FROM = 20, 10, 500_000
DEFAULT_MODEL = "denoising"  # chosen on validation (see the development protocol in tests/benchmarks/README.md)
FULL_BATCH = ("rprop", "lbfgs")
#: Pretraining epochs per layer when ``--pretrain`` is asked for without ``pretrain_epochs``: the setting of every
#: measured deep-AE figure in the RBM section of tests/benchmarks/README.md (not tuned further).
DEFAULT_PRETRAIN_EPOCHS = 10


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field can be set in the TOML config's ``[train]`` table (flags override the file)."""

    # most epochs (full-batch optimisers: one step per epoch); 0: auto, 300 up to LARGE_TRAIN_RATINGS training
    # ratings, above it about LARGE_MEMBER_RATINGS / ratings (6 at ML-32M), so the default train ends in minutes
    epochs: int = 0
    optimizer: str = "adam"  # adam | adamw (minibatch) | rprop | lbfgs (full batch)
    lr: float = 2e-3  # learning rate (Rprop: initial step size; L-BFGS: 1.0 is usual)
    # lambda of AutoRec's lambda/2 ||W||^2 (adamw: decoupled decay rate); 100 won on validation over 30 on ml-100k/1m
    weight_decay: float = 100.0
    weight_decay_grid: tuple[float, ...] = ()  # lambdas to try, one member each, best on validation wins
    batch_ratings: int = 0  # minibatch budget in ratings (0: auto, max(8192, ratings / 25)); whole vectors
    # stop after this many epochs without a better validation RMSE; 0: auto, 20, or 10 from 500k to 5M training
    # ratings (auto_patience)
    patience: int = 0
    lr_decay: float = 1.0  # multiply the learning rate by this after each lr_decay_patience epochs without progress
    lr_decay_patience: int = 5
    val_fraction: float = 0.05  # share of the training ratings held out for early stopping and model choice
    seed: int = 0  # seeds the validation carves (and the split, on the command line)
    init_seed: int | None = None  # seeds weights, shuffles and dropout (None: the same as seed)
    deterministic: bool = False  # torch.use_deterministic_algorithms and a fixed thread count (threads, else 1)
    # members trained with seeds seed, seed+1, ... and averaged (merged into one wider net); 0: auto, 4 up to
    # LARGE_TRAIN_RATINGS training ratings, 1 above (each member of 4 would take 35 s an epoch at ML-32M shape)
    ensemble: int = 0
    # members of the other orientation (a user AE beside an item AE), blended in with a weight fitted on validation
    partner_members: int = 1
    # share of the training ratings that no member and no partner trains or stops on: the blend weight of the shipped
    # ensemble and partner is fitted there, and the reported validation RMSE is cross-fitted on its halves
    blend_fraction: float = 0.02
    # one more blend component: Soft-Impute SVD (recae.evaluation.baselines.TruncatedSVDBaseline) fitted on the members' fit part,
    # stacked with the main ensemble (and partner) by weights and an intercept fitted on the blend carve; on by default
    # since it won on the development carves of u1.base (0.8968 against 0.8984) and ml-1m (0.8279 against 0.8308)
    blend_svd: bool = True
    # with blend_svd, one more stacked column: each user's affinity for the films' genres and release eras
    # (recae.models.side_part), where the catalogue has them; on since it won on the development carves of u1.base
    # and ml-1m (tests/benchmarks/README.md, "Side information")
    blend_side: bool = True
    # the top-N model that orders recommendations: "ease" (dense, recae.models.rankers), "sparse-ease" (every film at
    # any catalogue size, recae.models.sparse_ease), "auto" (dense EASE while the rated films fit ranker_head_items,
    # sparse above), or "none" to order by predicted rating
    ranker: str = "auto"
    ranker_lambda: float = 0.0  # EASE's lambda (0: chosen on a validation carve of the training ratings)
    ranker_input: str = "value"  # EASE reads r / r_max ("value") or 1 ("binary") per rating; value won on validation
    ranker_max_items: int = 20_000  # dense EASE covers at most this many (most-rated) films: 1.6 GB of float32 weights
    ranker_head_items: int = 12_000  # sparse EASE: films with exact EASE among themselves (576 MB); "auto"'s switch
    ranker_neighbours: int = 64  # sparse EASE: head films each other film is regressed on
    # dense EASE's Gram matrix also counts films rated within this many places of each other in a user's time order,
    # weighed ranker_time_weight (recae.models.time_pairs; 0: off; sparse EASE and undated ratings never use it)
    ranker_time_window: int = 3
    ranker_time_weight: float = 0.25
    # GB the ranker's fit may take at its peak (estimated before training starts, so a catalogue too large for it is
    # refused in one line rather than killed by the kernel an hour in); 0: no check
    memory_budget_gb: float = 6.0
    ranker_val_fraction: float = 0.1  # share of the training ratings carved to choose the ranker's lambda
    # a held-out rating is relevant (liked) from this rating on, in the ranker's lambda search and in the model's
    # ranking metrics (0: 0.8 x the top training rating, recae.evaluation.metrics.relevance_threshold: 4 on 1-5 and 0.5-5)
    relevant_from: float = 0.0
    threads: int = 0  # CPU threads (0: auto, one below AUTO_ONE_THREAD_BELOW ratings, else torch's default)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda

    @property
    def weights_seed(self) -> int:
        """The seed of initialisation, shuffles and dropout: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["weight_decay_grid"] = list(self.weight_decay_grid)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        values = strict_settings(cls, data, "train")
        if "weight_decay" in values and "weight_decay_grid" not in values:
            values["weight_decay_grid"] = ()  # an explicit lambda means: use it, do not choose
        if "weight_decay_grid" in values:
            values["weight_decay_grid"] = tuple(float(v) for v in values["weight_decay_grid"])
        return cls(**values)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise TrainingError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if self.device == "cuda" and not _cuda_available():
            raise TrainingError("--device cuda was asked for but torch sees no CUDA device; use --device auto or cpu")
        if not 0.0 < self.lr_decay <= 1.0 or self.lr_decay_patience < 1:
            raise TrainingError("lr_decay must be in (0, 1] and lr_decay_patience positive")
        if self.epochs < 0 or self.batch_ratings < 0 or self.patience < 0 or self.ensemble < 0:
            raise TrainingError("epochs, patience, ensemble and batch_ratings must not be negative (0: auto)")
        if self.partner_members < 0 or not 0.0 < self.blend_fraction < 1.0:
            raise TrainingError(f"partner_members must be >= 0 (got {self.partner_members}) and blend_fraction in "
                                f"(0, 1) (got {self.blend_fraction})")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.weight_decay < 0 or any(w < 0 for w in self.weight_decay_grid):
            raise TrainingError("lr must be positive and weight decays non-negative")
        if self.ranker not in RANKERS:
            raise TrainingError(f"unknown ranker {self.ranker!r}; choose one of {', '.join(RANKERS)}")
        if self.ranker_input not in RANKER_INPUTS:
            raise TrainingError(f"unknown ranker_input {self.ranker_input!r}; choose one of {', '.join(RANKER_INPUTS)}")
        if not self.memory_budget_gb >= 0:
            raise TrainingError(f"memory_budget_gb must be >= 0 (0: no check), got {self.memory_budget_gb}")
        if self.ranker_head_items < 1 or self.ranker_neighbours < 1:
            raise TrainingError("ranker_head_items and ranker_neighbours must be positive")
        if self.ranker_time_window < 0 or self.ranker_time_weight < 0:
            raise TrainingError("ranker_time_window and ranker_time_weight must be 0 (off) or positive")
        if self.ranker_lambda < 0 or self.ranker_max_items < 1 or not 0.0 < self.ranker_val_fraction < 1.0:
            raise TrainingError("ranker_lambda must be >= 0, ranker_max_items positive, ranker_val_fraction in (0, 1)")
        if not 0.0 <= self.relevant_from < float("inf"):
            raise TrainingError(f"relevant_from must be a rating >= 0 (0: from the scale), got {self.relevant_from}")

    def resolved(self, n_ratings: int) -> TrainConfig:
        """The config with its automatic settings fixed for ``n_ratings`` training ratings (set ones are kept).

        ``batch_ratings``: ~25 steps per epoch, at least 8192 ratings each (each Adam step costs O(parameters) on
        top of O(ratings * width), so larger data takes larger batches). ``ensemble`` and ``epochs``: see
        :func:`auto_members` and :func:`auto_epochs`.
        """
        return replace(self.sized(n_ratings),
                       batch_ratings=self.batch_ratings or max(AUTO_MIN_BATCH, -(-n_ratings // AUTO_STEPS_PER_EPOCH)))

    def blas_threads(self, n_ratings: int) -> int | None:
        """Threads numpy's and scipy's BLAS may use in a run on ``n_ratings`` training ratings (None: BLAS's own
        default): ``threads`` when set, one below AUTO_ONE_THREAD_BELOW as for torch (recae.threads.blas_threads)."""
        if self.threads > 0:
            return self.threads
        return 1 if n_ratings < AUTO_ONE_THREAD_BELOW else None

    def sized(self, n_ratings: int) -> TrainConfig:
        """The config with ``ensemble``, ``epochs`` and ``patience`` fixed for ``n_ratings`` training ratings where
        they are auto (0); a run sizes itself once, on its whole training part, so its members agree."""
        return replace(self, ensemble=self.ensemble or auto_members(n_ratings),
                       epochs=self.epochs or auto_epochs(n_ratings), patience=self.patience or auto_patience(n_ratings))

    @property
    def is_sized(self) -> bool:
        """Whether every setting :meth:`sized` fixes is set (a config made for one network, a sized run's)."""
        return bool(self.ensemble and self.epochs and self.patience)


def _cuda_available() -> bool:
    import torch  # only a config asking for cuda pays for it: reading a model's meta.json needs no torch

    return bool(torch.cuda.is_available())


def auto_members(n_ratings: int) -> int:
    """Ensemble members when none are set: AUTO_MEMBERS (chosen on validation carves of ml-100k and ml-1m) up to
    LARGE_TRAIN_RATINGS, one above, where a member's epoch takes most of a minute."""
    return AUTO_MEMBERS if n_ratings <= LARGE_TRAIN_RATINGS else 1


def auto_epochs(n_ratings: int) -> int:
    """Most epochs when none are set: AUTO_EPOCHS (early stopping ends sooner) up to LARGE_TRAIN_RATINGS; above it,
    enough for a member to read about LARGE_MEMBER_RATINGS ratings, at least LARGE_MIN_EPOCHS, so the default
    ``recae train`` at ML-32M shape ends within the half hour the product promises."""
    if n_ratings <= LARGE_TRAIN_RATINGS:
        return AUTO_EPOCHS
    return max(LARGE_MIN_EPOCHS, -(-LARGE_MEMBER_RATINGS // max(n_ratings, 1)))


def auto_patience(n_ratings: int) -> int:
    """Early-stopping patience when none is set: see AUTO_PATIENCE."""
    return SHORT_PATIENCE if SHORT_PATIENCE_FROM <= n_ratings <= LARGE_TRAIN_RATINGS else AUTO_PATIENCE


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML config: ``[model]`` and ``[train]`` tables, or top-level keys named like either's fields.

    Returns (model settings, train settings) to merge under the command-line flags.
    Raises DataError naming the file for unreadable TOML or an unknown key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"cannot read config file {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{path}: invalid TOML: {err}") from err
    model_part: dict[str, Any] = {}
    train_part: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            cls, target = (ModelConfig, model_part) if key == "model" else (TrainConfig, train_part)
            try:
                target.update(strict_settings(cls, value, key))
            except UnknownSettingError as err:
                known = ", ".join(err.known)
                raise DataError(f"{path}: unknown key {key}.{err.name}; known keys are {known}") from None
        elif key in setting_names(ModelConfig):
            model_part[key] = value
        elif key in setting_names(TrainConfig):
            train_part[key] = value
        else:
            raise DataError(f"{path}: unknown key {key!r}; use [model] and [train] tables of their settings")
    for part, cls in ((model_part, ModelConfig), (train_part, TrainConfig)):
        defaults = {f.name: f.default for f in fields(cls)}
        for name, value in part.items():
            wanted = _setting_type(defaults[name])
            if wanted is not None and not _is_setting_of(value, wanted):
                raise DataError(f"{path}: {name} = {value!r} is not {wanted[1]}")
    return model_part, train_part


def _setting_type(default: Any) -> tuple[type, str] | None:
    """The kind of value a setting with this default takes, and its name for messages (None: not checked)."""
    for kind, name in ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "a string"),
                       (tuple, "a list of numbers")):
        if isinstance(default, kind):
            return kind, name
    return None


def _is_setting_of(value: Any, wanted: tuple[type, str]) -> bool:
    """TOML's value fits the setting: ints where numbers go, a bare number where a list of them does (hidden)."""
    kind = wanted[0]
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    if kind is tuple:
        items = value if isinstance(value, list) else [value]
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    return isinstance(value, kind)


def default_configs(model: str = DEFAULT_MODEL, **model_overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """The shipped defaults (chosen on validation carves: tests/benchmarks/README.md, development protocol)."""
    # the model registry imports torch: only training resolves configs, reading one from meta.json does not
    from recae.models.build import model_config

    return model_config(model, **model_overrides), TrainConfig()


def resolve(config_file: str | Path | None, flags: Mapping[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """A run's validated configuration: the defaults, then the config file's settings, then the given ``flags``.

    ``flags`` are named like the settings they override (``name`` picks the model; ``orientation`` and ``pretrain``
    are model settings, the rest TrainConfig's); None means not given. Asking for ``pretrain`` turns pretraining
    on with DEFAULT_PRETRAIN_EPOCHS per layer unless the file sets its epochs. ``recae train`` and ``recae retrain``
    both build their configuration here, so a file means the same to both.
    """
    from recae.models.build import model_config

    model_part, train_part = load_config_file(config_file) if config_file else ({}, {})
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    model_flags = {name: value for name, value in given.items() if name in setting_names(ModelConfig)}
    train_flags = strict_settings(TrainConfig, {k: v for k, v in given.items() if k not in model_flags}, "train")
    if "pretrain" in model_flags:
        model_flags.setdefault("pretrain_epochs", model_part.get("pretrain_epochs") or DEFAULT_PRETRAIN_EPOCHS)
    model_part = {**model_part, **model_flags}
    name = model_part.pop("name", DEFAULT_MODEL)
    train_cfg = TrainConfig.from_json({**train_part, **train_flags})
    model_cfg = model_config(name, **model_part)
    model_cfg.validate()
    train_cfg.validate()
    return model_cfg, train_cfg
