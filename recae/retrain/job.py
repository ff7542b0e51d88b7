"""Nightly retraining: lock -> ingest the inbox -> train a challenger -> compare with the champion -> publish or keep.

One run (``recae retrain``, from cron or a systemd timer):

1. takes ``locks/retrain.lock`` without waiting (a second run raises LockHeldError, exit 75);
2. ingests every new ratings file of the inbox (a file already ingested is recognised by its sha256), moving it to
   ``inbox/processed/``; a bad file goes to ``inbox/rejected/`` with ``FILE.reason.txt`` and the others go on;
3. stops with decision ``unchanged`` when the store's data fingerprint is one the champion was trained or already
   challenged on;
4. otherwise fine-tunes a challenger from the champion (warm start, same configuration; rows of new users or movies
   start at zero; the ranker is refitted, lambda chosen on a validation carve), scores both on the same fixed
   holdout, and publishes the challenger only when its RMSE is lower by at least ``margin`` and its NDCG@10 is not
   lower than the champion's by more than ``ndcg_margin``: weights and meta first, then the precomputed
   recommendations and the champion pointer in one transaction (``recae.serving.registry.publish``). Versions
   beyond the newest ``keep`` (never the champion) are pruned. A champion with a blend carve (a partner or a
   Soft-Impute SVD) records it (``recae.retrain.holdout``): those ratings are the only ones no member fitted, so
   fine-tuning stops early there and the blend is refitted there (the pair's weight; with ``blend_svd`` the SVD,
   refitted on the fit part in seconds, and the stacking weights), never kept from the champion. A stacking
   champion without such a record (a folder written before it) gets a challenger trained from scratch;
5. records the run in ``retrain_runs`` and returns its summary (the CLI prints it as one JSON line).

With no champion yet, the first run trains one with the default (or ``--config``) configuration and publishes it.

The holdout both models are scored on is fixed and inherited from version to version (``recae.retrain.holdout``).
A version killed between publish and promotion (not the champion, no recommendations) is removed by the next run;
the champion always stays loadable.

``run_retrain(..., on_stage=...)`` is told when a run reaches ``train`` (after its first training epoch) and
``publish`` (inside the publish transaction, after the first batch of recommendations): tests pause there to
SIGKILL the run at that exact point (tests/support/retrain_worker.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recae.errors import ModelNotFoundError, RecaeError, TrainingError
from recae.models.side_part import groups_from_store
from recae.retrain.holdout import (
    HoldoutRecord,
    blend_keys,
    ensure_holdout,
    inherited_partition,
    matrix_keys,
    read_holdout,
    validation_keys,
    write_holdout,
)
from recae.retrain.inbox import InboxFile, ingest_inbox
from recae.retrain.runs import RetrainReport, finish_run, known_fingerprints, start_run
from recae.retrain.warm_start import fine_tune, first_configs, warm_start_module

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from recae.artifacts.train_config import TrainConfig
    from recae.artifacts.trained_model import TrainedModel
    from recae.models.autoencoders import AutoEncoder, ModelConfig
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

LOCK_FILE = "retrain.lock"
DEFAULT_MARGIN = 0.002
#: NDCG@10 a challenger may give up and still be published: about two standard errors of a mean NDCG@10 over
#: ml-1m's users (per-user sd 0.21 over 5,683 users of a 10% validation carve of the 90/10 training part: 0.0028)
DEFAULT_NDCG_MARGIN = 0.005
DEFAULT_KEEP = 5
DEFAULT_WARM_EPOCHS = 10
#: Fine-tuning learning rate = this x training's: a fresh Adam at the full rate knocks a converged model off its
#: optimum (ml-100k, default model: validation RMSE 0.892 -> 0.961 after one epoch at 1x; 0.891 at 0.02x).
DEFAULT_WARM_LR_SCALE = 0.02
DEFAULT_WARM_PATIENCE = 3
DEFAULT_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class RetrainOptions:
    """Settings of one run; the defaults are what ``recae retrain`` uses without flags."""

    inbox: Path  # new ratings files (plain CSV user_id,movie_id,rating[,timestamp])
    margin: float = DEFAULT_MARGIN  # publish only when RMSE(champion) - RMSE(challenger) >= margin
    ndcg_margin: float = DEFAULT_NDCG_MARGIN  # ... and NDCG@10(champion) - NDCG@10(challenger) <= ndcg_margin
    keep: int = DEFAULT_KEEP  # published versions kept (the champion always is)
    # most fine-tuning epochs of a warm start (early stopping still applies); 0: DEFAULT_WARM_EPOCHS, fewer where
    # training's own epochs are capped for size (recae.artifacts.train_config.auto_epochs: 6 at ML-32M shape)
    warm_epochs: int = 0
    warm_lr_scale: float = DEFAULT_WARM_LR_SCALE  # fine-tuning learning rate as a multiple of the champion's
    warm_patience: int = DEFAULT_WARM_PATIENCE  # stop fine-tuning after this many epochs without improvement
    cold: bool = False  # train the challenger from scratch with the champion's configuration
    scale: tuple[float, float] = (0.5, 5.0)  # allowed ratings in inbox files
    step: float | None = 0.5  # allowed increment above scale[0] (None: any value)
    model_config: ModelConfig | None = None  # configuration of a first champion (default: the shipped one)
    train_config: TrainConfig | None = None


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on the same held-out ratings: ``rmse = sqrt(mean((clip(rhat) - r)^2))`` and
    the NDCG@10 of each one's served ranking (held-out ratings relevant from the challenger's threshold,
    ``recae.artifacts.trained_model.model_relevance``, for both; NaN when no user has one)."""

    champion_rmse: float
    challenger_rmse: float
    n_compared: int  # holdout ratings whose user and movie both models know
    n_holdout: int  # the whole fixed holdout (the challenger's own test_rmse covers all of it)
    champion_ndcg: float = float("nan")
    challenger_ndcg: float = float("nan")

    @property
    def improvement(self) -> float:
        return self.champion_rmse - self.challenger_rmse

    @property
    def ndcg_loss(self) -> float:
        """How much NDCG@10 the challenger gives up (negative: it ranks better); 0 when either is unmeasured."""
        loss = self.champion_ndcg - self.challenger_ndcg
        return 0.0 if math.isnan(loss) else loss


# --- the comparison --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ChampionFigures:
    """The champion scored on the holdout before the challenger is trained, so the champion's networks and ranker
    need not stay in memory beside the challenger's training (3 GB at ML-32M shape)."""

    common: RatingMatrix  # holdout ratings (challenger's index) whose user and movie the champion knows
    rmse: float
    ndcg: float
    n_holdout: int


def champion_figures(champion: TrainedModel, holdout: RatingMatrix, threshold: float) -> ChampionFigures:
    """The champion's RMSE and NDCG@10 on the holdout ratings whose user and movie it knows (``holdout`` is on the
    challenger's index; the champion never read any of them); held-out ratings relevant from ``threshold``."""
    from recae.evaluation.evaluate import held_out_for_model
    from recae.evaluation.metrics import ranking_metrics, rating_metrics

    rows, cols, _ = holdout.coo()
    known = (champion.index.lookup_users(holdout.index.user_ids[rows]) >= 0) & (
        champion.index.lookup_movies(holdout.index.movie_ids[cols]) >= 0)
    common = holdout.subset(known)
    if common.nnz == 0:
        return ChampionFigures(common, float("nan"), float("nan"), holdout.nnz)
    on_champion, dropped = held_out_for_model(common, champion.inputs)
    if dropped:
        raise TrainingError(f"{dropped} holdout ratings were read by the champion; the holdout record is inconsistent")
    rmse = rating_metrics(champion, on_champion).rmse
    ndcg = ranking_metrics(champion, champion.inputs, on_champion, k=10, threshold=threshold).ndcg
    return ChampionFigures(common, float(rmse), float(ndcg), holdout.nnz)


def compare(before: ChampionFigures, challenger: TrainedModel, threshold: float) -> Comparison:
    """The challenger scored like the champion was (:func:`champion_figures`), on the same ratings and threshold
    (the one the challenger chose lambda by)."""
    from recae.evaluation.metrics import ranking_metrics, rating_metrics

    common = before.common
    if common.nnz == 0:
        return Comparison(float("nan"), float("nan"), 0, before.n_holdout)
    rmse = rating_metrics(challenger, common).rmse
    ndcg = ranking_metrics(challenger, challenger.inputs, common, k=10, threshold=threshold).ndcg
    return Comparison(before.rmse, float(rmse), common.nnz, before.n_holdout, before.ndcg, float(ndcg))


def verdict(result: Comparison, margin: float, ndcg_margin: float) -> str | None:
    """None when the challenger may be published, else why not: its RMSE must be lower by ``margin`` and its
    NDCG@10 no lower than the champion's by more than ``ndcg_margin`` (it must lose neither prediction nor list)."""
    if result.n_compared == 0:
        return "no held-out rating both models can score"
    if result.improvement < margin:
        return (f"challenger RMSE {result.challenger_rmse:.4f} vs champion {result.champion_rmse:.4f} on "
                f"{result.n_compared} held-out ratings: not better by the margin {margin:g}")
    if result.ndcg_loss > ndcg_margin:
        return (f"challenger NDCG@10 {result.challenger_ndcg:.4f} vs champion {result.champion_ndcg:.4f}: it ranks "
                f"worse by more than the margin {ndcg_margin:g}")
    return None


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """What a run has learned so far (mutable while it runs; frozen into a RetrainReport at the end)."""

    run: int
    started_at: datetime
    champion_before: str | None = None
    challenger: str | None = None
    champion_after: str | None = None
    decision: str | None = None
    message: str = ""
    files: tuple[InboxFile, ...] = ()
    fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()


def run_retrain(engine: Engine, models_dir: Path, locks_dir: Path, options: RetrainOptions, *,
                on_progress: Callable[[str], None] | None = None,
                on_report: Callable[[RetrainReport], None] | None = None,
                on_stage: Callable[[str], None] | None = None) -> RetrainReport:
    """One nightly run (see the module docstring). ``on_report`` also gets the summary of a failed run;
    ``on_stage(point)`` is called at ``train`` and ``publish`` (for tests that kill a run there).

    Raises:
        LockHeldError: another run holds ``locks_dir/retrain.lock`` (nothing is recorded).
        RecaeError: the run failed (recorded as ``failed``; the champion is untouched).
    """
    from recae.locks import job_lock
    from recae.store.db import utcnow

    with job_lock(locks_dir / LOCK_FILE, "recae retrain"):
        clock = time.perf_counter()
        started_at = utcnow()
        state = _State(run=start_run(engine, started_at), started_at=started_at)
        status = "failed"
        try:
            _run_locked(engine, models_dir, options, state, on_progress or (lambda _m: None),
                        on_stage or (lambda _p: None))
            status = "succeeded"
        except RecaeError as err:
            state.message = str(err)
            raise
        except BaseException as err:
            state.message = f"{type(err).__name__}: {err}"
            raise
        finally:
            report = RetrainReport(
                run=state.run, started_at=started_at.isoformat(timespec="seconds"), status=status,
                decision=state.decision, message=state.message, champion_before=state.champion_before,
                challenger=state.challenger, champion_after=state.champion_after or state.champion_before,
                files=state.files, rows_loaded=sum(f.rows_loaded for f in state.files),
                data_fingerprint=state.fingerprint, metrics=state.metrics, pruned=state.pruned,
                seconds=round(time.perf_counter() - clock, 3),
            )
            try:
                finish_run(engine, report)
            finally:
                if on_report is not None:
                    on_report(report)
    return report


def _fits_catalogue(engine: Engine, version: str) -> bool:
    """False for a champion of a catalogue that ``ingest --replace`` replaced: it cannot be challenged or warmed."""
    from recae.store.identity import model_fits_catalogue

    with engine.connect() as conn:
        return model_fits_catalogue(conn, version)


def _run_locked(engine: Engine, models_dir: Path, options: RetrainOptions, state: _State,
                progress: Callable[[str], None], stage: Callable[[str], None]) -> None:
    from recae.artifacts.model_files import load_model
    from recae.serving.registry import champion_of, get_version, prune_versions, remove_unfinished, version_folder
    from recae.store.matrix import RatingMatrix
    from recae.training.memory import release_freed_memory

    removed = remove_unfinished(engine, models_dir)
    champion_version = champion_of(engine)
    if champion_version is not None and not _fits_catalogue(engine, champion_version):
        log.warning("champion %s was trained on a catalogue since replaced; training a first champion", champion_version)
        champion_version = None
    champion_dir: Path | None = None
    known: set[str] = set()
    if champion_version is not None:
        state.champion_before = champion_version
        champion_dir = version_folder(get_version(engine, champion_version).path, models_dir)
        record = ensure_holdout(engine, champion_dir, load_model(champion_dir), champion_version)  # before tonight's
        known.update([record.store_fingerprint] if record.store_fingerprint else [])

    state.files = ingest_inbox(engine, options.inbox, scale=options.scale, step=options.step, on_progress=progress)
    matrix = RatingMatrix.from_db(engine)
    state.fingerprint = matrix.fingerprint()
    if champion_dir is not None and state.fingerprint in known | known_fingerprints(engine, champion_version or ""):
        state.decision = "unchanged"
        state.message = f"no new ratings since {champion_version} was trained or last challenged; nothing trained"
        state.pruned = removed + prune_versions(engine, models_dir, options.keep)
        return

    if champion_dir is None:
        _first_champion(engine, models_dir, options, matrix, state, progress, stage)
    else:
        release_freed_memory()  # loaded again only now: the store's reading peaked without the champion beside it
        handed = [load_model(champion_dir)]  # _challenge drops it once scored and copied: only this list holds it
        _challenge(engine, models_dir, options, matrix, handed, champion_dir, state, progress, stage)
    state.pruned = removed + prune_versions(engine, models_dir, options.keep)


def _first_champion(engine: Engine, models_dir: Path, options: RetrainOptions, matrix: RatingMatrix, state: _State,
                    progress: Callable[[str], None], stage: Callable[[str], None]) -> None:
    from recae.evaluation.splits import SplitSpec, make_split
    from recae.training.train import train_split

    model_cfg, train_cfg = first_configs(options.model_config, options.train_config)
    spec = SplitSpec("random", DEFAULT_TEST_FRACTION, train_cfg.seed)
    split = make_split(matrix, spec)
    progress(f"no champion yet: training {model_cfg.name} ({model_cfg.orientation}) on {split.train.nnz} ratings")
    result = train_split(split, model_cfg, train_cfg, on_epoch=_after_first_epoch(stage),
                         groups=groups_from_store(engine, matrix.index))
    state.metrics = {k: v for k, v in result.metrics.items()}
    state.metrics["challenger_rmse"] = result.metrics.get("test_rmse")
    record = HoldoutRecord(test=matrix_keys(split.test), val=validation_keys(split.train, train_cfg),
                           store_fingerprint=matrix.fingerprint(), blend=blend_keys(result.trained))
    _publish(engine, models_dir, result.trained, matrix, record, state, progress, stage)
    state.decision = "first"
    state.message = f"no champion before; {state.challenger} now serves"


def _after_first_epoch(stage: Callable[[str], None]) -> Callable[[Any], None]:
    """An ``on_epoch`` that reports stage ``train`` once the first epoch is done."""

    def on_epoch(report: Any) -> None:
        epoch = report if isinstance(report, int) else getattr(report, "epoch", 1)
        if epoch == 1:
            stage("train")

    return on_epoch


def _challenge(engine: Engine, models_dir: Path, options: RetrainOptions, matrix: RatingMatrix,
               handed: list[TrainedModel], champion_dir: Path, state: _State, progress: Callable[[str], None],
               stage: Callable[[str], None]) -> None:
    """Score the champion on the holdout, copy what the challenger needs from it, let it go, then train the
    challenger (warm or cold), compare and publish it if it wins."""
    from recae.artifacts.train_config import TrainConfig, auto_epochs
    from recae.artifacts.trained_model import TrainedModel, with_metrics
    from recae.evaluation.metrics import relevance_threshold
    from recae.evaluation.splits import Split, SplitSpec
    from recae.training.ensemble import fit_blend_parts
    from recae.training.memory import check_memory, log_peak
    from recae.training.ranking import fit_ranker
    from recae.training.train import test_metrics, train_split
    from recae.training.validation import unit_means

    champion = handed.pop()
    spec_json = dict(champion.split_spec or {})
    fraction = float(spec_json.get("test_fraction", DEFAULT_TEST_FRACTION))
    seed = int(spec_json.get("seed", 0))
    recorded = read_holdout(champion_dir)
    if recorded is None:
        raise ModelNotFoundError(f"champion {state.champion_before} has no holdout record in {champion_dir}")
    train_cfg = champion.train_config or TrainConfig()
    check_memory(matrix, champion.model_config, train_cfg)  # a grown store may pass the budget: say so before work
    stacked = champion.svd is not None  # its SVD and stacking weights are refitted, the weights on the blend carve
    carved = recorded.blend is not None  # ratings no model of the line fitted: fine-tuning stops and blends there
    part = inherited_partition(matrix, matrix_keys(champion.inputs), recorded.test, recorded.val, fraction,
                               train_cfg.val_fraction, seed, blend_keys=recorded.blend,
                               blend_fraction=train_cfg.blend_fraction)
    holdout = matrix.subset(part.test)
    # both models' lists are judged from the challenger's threshold: its train config is the champion's, its scale
    # that of the grown training part (recae.artifacts.trained_model.model_relevance)
    threshold = relevance_threshold(float(matrix.csr.data[~part.test].max()), train_cfg.relevant_from)
    progress(f"scoring the champion on {holdout.nnz} held-out ratings")
    before = champion_figures(champion, holdout, threshold)  # first: nothing else of tonight's is in memory yet
    champion.drop_caches()  # held on only for its weights: the warm start's copy
    log_peak("champion's scoring")
    train = matrix.subset(~part.test)
    val_part, blend_part = matrix.subset(part.val), matrix.subset(part.blend)
    # An ensemble's members each stop on their own carve, so every rating outside the blend carve was fitted by
    # some member: only the blend carve can tell whether fine-tuning helps (else epoch 0 always looks best).
    fit_part = matrix.subset(~part.test & ~part.blend) if carved else matrix.subset(~part.test & ~part.val)
    stop_part = blend_part if carved else val_part
    challenger_spec = {**SplitSpec.from_json(spec_json or {"name": "random"}).to_json(),
                       "holdout": "recorded", "holdout_of": state.champion_before}

    modules = None
    if not options.cold and stacked and not carved:
        progress("the champion stacks a Soft-Impute SVD but has no recorded blend carve to refit its weights on: "
                 "training the challenger from scratch")
    elif not options.cold:
        from recae.models.batches import oriented_csr

        def warm(part: TrainedModel) -> AutoEncoder | None:
            oriented = oriented_csr(fit_part, part.orientation)
            return warm_start_module(part, matrix.index, unit_means(oriented, oriented.shape[1]))

        modules = [warm(part) for part in (champion, champion.partner) if part is not None]
        if any(m is None for m in modules):
            modules = None
            progress("the champion's weights do not fit a warm start; training from scratch")
    champion_model, blend_weight = champion.model_config, champion.blend_weight
    champion_lambda = champion.ranker.lam if champion.ranker is not None else 0.0
    del champion  # its networks, ranker and inputs: freed before the challenger trains
    if modules is not None:
        warm_epochs = options.warm_epochs or min(DEFAULT_WARM_EPOCHS, auto_epochs(train.nnz))
        progress(f"fine-tuning the champion on {train.nnz} ratings (at most {warm_epochs} epochs)")
        on_epoch = _after_first_epoch(stage)
        tune_cfg = replace(train_cfg, lr=train_cfg.lr * options.warm_lr_scale, patience=options.warm_patience)
        tuned = [fine_tune(m, fit_part, stop_part, tune_cfg, warm_epochs,  # type: ignore[arg-type]
                           on_epoch=lambda epoch, _val: on_epoch(epoch)) for m in modules]
        log_peak("fine-tuning")
        fitted = tuned[0]
        trained = TrainedModel.from_fit(modules[0], train, train_config=train_cfg,  # type: ignore[arg-type]
                                        split_spec=challenger_spec)
        if len(modules) == 2:  # the partner is tuned alike
            trained = replace(trained, partner=TrainedModel.from_fit(modules[1], train),  # type: ignore[arg-type]
                              blend_weight=blend_weight)
            fitted = {**fitted, "partner_val_rmse": tuned[1]["val_rmse"], "blend_weight": blend_weight,
                      "seconds": round(sum(t["seconds"] for t in tuned), 3)}
        if carved:  # the blend refitted where fine-tuning stopped, as training fits it; the champion's kept else
            progress(f"refitting the blend on {blend_part.nnz} blend-carve ratings")
            trained, blended = fit_blend_parts(trained, fit_part, blend_part, replace(train_cfg, blend_svd=stacked),
                                               groups=groups_from_store(engine, matrix.index))
            fitted = {**fitted, "tuned_val_rmse": fitted["val_rmse"], **blended}
            log_peak("blend")
        if train_cfg.ranker != "none":  # EASE has a closed form: refitted on the grown data, not fine-tuned
            # at the champion's lambda, chosen on a carve when it was trained: a night's ratings barely move it, and
            # the search is most of the ranker's time at ML-32M shape (2.5 of 4.5 minutes)
            lam = champion_lambda or train_cfg.ranker_lambda
            progress(f"refitting the ranker (EASE, lambda {lam:g})" if lam > 0 else "refitting the ranker (EASE)")
            ranker, search = fit_ranker(train, replace(train_cfg, ranker_lambda=lam))
            trained = replace(trained, ranker=ranker, ranker_search=search)
            fitted = {**fitted, "ranker_lambda": ranker.lam}
            log_peak("ranker")
        metrics: dict[str, Any] = {**fitted, "warm_start": True, "n_train": train.nnz, "n_test": holdout.nnz,
                                   **test_metrics(trained, holdout)}
        trained = with_metrics(trained, metrics)
        record = HoldoutRecord(test=matrix_keys(holdout), val=matrix_keys(val_part),
                               store_fingerprint=state.fingerprint, blend=matrix_keys(blend_part) if carved else None)
    else:
        model_cfg = champion_model
        if train_cfg.ensemble > 1 and all(h % train_cfg.ensemble == 0 for h in model_cfg.hidden):
            model_cfg = replace(model_cfg, hidden=tuple(h // train_cfg.ensemble for h in model_cfg.hidden))
        progress(f"training {model_cfg.name} from scratch on {train.nnz} ratings")
        split = Split(spec=SplitSpec.from_json(challenger_spec), train=train, test=holdout)
        result = train_split(split, model_cfg, train_cfg, on_epoch=_after_first_epoch(stage),
                             groups=groups_from_store(engine, matrix.index))
        metrics = {**result.metrics, "warm_start": False}
        trained = with_metrics(replace(result.trained, split_spec=challenger_spec, _cache=result.trained._cache),
                               metrics)
        record = HoldoutRecord(test=matrix_keys(holdout), val=validation_keys(train, train_cfg),
                               store_fingerprint=state.fingerprint, blend=blend_keys(trained))

    result_cmp = compare(before, trained, threshold)
    log_peak("challenger's scoring")
    state.metrics = {**metrics, "champion_rmse": result_cmp.champion_rmse,
                     "challenger_rmse": result_cmp.challenger_rmse, "improvement": result_cmp.improvement,
                     "champion_ndcg@10": result_cmp.champion_ndcg, "challenger_ndcg@10": result_cmp.challenger_ndcg,
                     "margin": options.margin, "ndcg_margin": options.ndcg_margin,
                     "n_compared": result_cmp.n_compared, "n_holdout": result_cmp.n_holdout}
    refusal = verdict(result_cmp, options.margin, options.ndcg_margin)
    if refusal is not None:
        state.decision = "kept"
        state.message = f"{refusal}; {state.champion_before} stays"
        return
    _publish(engine, models_dir, trained, matrix, record, state, progress, stage)
    state.decision = "published"
    state.message = (f"challenger RMSE {result_cmp.challenger_rmse:.4f} beat champion {result_cmp.champion_rmse:.4f} "
                     f"on {result_cmp.n_compared} held-out ratings; {state.challenger} now serves "
                     f"(roll back: recae models use {state.champion_before})")


def _publish(engine: Engine, models_dir: Path, trained: TrainedModel, matrix: RatingMatrix, record: HoldoutRecord,
             state: _State, progress: Callable[[str], None], stage: Callable[[str], None]) -> None:
    """Publish through the registry: weights, meta and holdout record, the version's row, then its recommendations
    and the champion pointer in a second transaction (``crown_apart``, so a run killed while precomputing leaves a
    row without recommendations that ``remove_unfinished`` recognises). If anything fails before the pointer
    switches, the new version is removed again and the champion is untouched.
    """
    from recae.serving.recommend import precompute_recommendations
    from recae.serving.registry import publish

    progress("publishing")
    paused = {"done": False}

    def on_batch(_n: int) -> None:
        if not paused["done"]:
            paused["done"] = True
            stage("publish")

    def precompute(conn: Connection, version: str) -> int:
        progress("precomputing recommendations and switching the champion")
        return precompute_recommendations(conn, version, trained, matrix, on_batch=on_batch)

    published = publish(engine, models_dir, trained, data_fingerprint=matrix.fingerprint(), precompute=precompute,
                        extra_files=lambda folder: write_holdout(folder, record), crown_apart=True)
    state.challenger = state.champion_after = published.version
