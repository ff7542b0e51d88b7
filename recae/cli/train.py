"""Training and scoring: ``train`` (and its --tune report), ``evaluate``, ``quickstart``, and Mult-VAE's ``vae``."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.options import (
    F,
    CountOrShare,
    LazyChoice,
    format_option,
    refuse_with,
    split_names,
    summary_format_option,
    version_option,
)
from recae.cli.progress import TrainProgress
from recae.cli.tuning import tune_summary
from recae.models.names import MODEL_NAMES, ORIENTATIONS, PRETRAINS
from recae.settings import DEVICES


def _positive_rating(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A finite rating above 0, or None when not given (click's FloatRange lets nan and inf through)."""
    if value is not None and not 0 < value < float("inf"):
        raise click.BadParameter(f"{value:g} is not a rating above 0", ctx=ctx, param=param)
    return value


def relevant_from_option(default: str) -> Callable[[F], F]:
    """``--relevant-from RATING``: where liking starts, for ranking figures and the ranker's lambda search."""
    return click.option("--relevant-from", "relevant_from", type=float, metavar="RATING", callback=_positive_rating,
                        help=f"Held-out ratings from this one on count as liked (relevant) where lists are scored: "
                             f"precision/recall/NDCG and the ranker's lambda search (default: {default}0.8 x the top "
                             f"rating: 4 on 1-5 and 0.5-5, 8 on 2-10).")


@cli.command()
@version_option()
@click.option("--split", "split_name", help="Score on another split instead of the model's own (e.g. u2).")
@click.option("--test-fraction", type=float, default=0.1, show_default=True, help="With --split: held-out share.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --split: the split's seed.")
@click.option("--ratings", "ratings_file", type=click.Path(exists=True, dir_okay=False),
              help="Score on this CSV user_id,movie_id,rating (the ingest --ratings format) of ratings the model "
                   "never read, instead of its split's held-out part.")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Ranking cut-off.")
@relevant_from_option("the model's, which it was trained with, else ")
@format_option
@pass_context
def evaluate(obj: Context, version: str | None, split_name: str | None, test_fraction: float, seed: int,
             ratings_file: str | None, k: int, relevant_from: float | None, fmt: str) -> None:
    """RMSE and MAE on the held-out ratings of the model's own split, beside the baselines.

    Predictions are clipped to the rating scale. Ranking quality (precision, recall, NDCG at k) counts held-out
    ratings from --relevant-from on as relevant (default: the model's own threshold, which is 0.8 x its top
    rating unless trained with --relevant-from: 4 on 1-5 and 0.5-5, 8 on 2-10) and never ranks films the model
    read in training. Baselines (global mean, user+item biases, truncated SVD, the most-popular list and EASE with
    its lambda chosen on validation) are fitted on the same training ratings; the table's "ndcg@k vs ease" column
    says by how much each list beats (or trails) that EASE reference.

    With --ratings FILE the held-out ratings are the file's (they need not be in the store: last month's ratings
    kept aside, a published test set); pairs whose user or film the model does not know are skipped and counted
    (n_skipped); a pair the model read in training is refused (exit 65).

    \b
    Examples:
      recae evaluate
      recae evaluate --model 20261123-101500-stacked --format json
      recae evaluate --ratings last-month.csv --format json
      recae evaluate --relevant-from 4.5
    """
    from recae.cli.output import render
    from recae.serving.evaluate_version import evaluate_model
    from recae.evaluation.splits import choose_split

    held = None
    if ratings_file is not None:
        refuse_with("--ratings", ("split_name", "--split"), ("test_fraction", "--test-fraction"), ("seed", "--seed"))
        from recae.store.ingest import read_ratings_file

        held = read_ratings_file(ratings_file)
    spec = choose_split(split_name, test_fraction, seed) if split_name else None
    report = evaluate_model(obj.engine(), version, spec, k=k, relevant_from=relevant_from,
                            models_dir=obj.paths().models_dir, held=held)
    if report.note:
        echo_info(f"note: {report.note}")
    if fmt == "json":
        echo_data(render(report.to_json(), fmt))
    else:
        source = f"{held.label}" if held is not None else f"split {report.split}"
        echo_data(render(report.rows(), fmt, title=f"Held-out ratings of {source} (n={report.n_test}, "
                                                   f"relevant from {report.relevant_from:g})"))


@cli.command()
@click.option("--path", type=click.Path(exists=True), help="ml-100k zip or folder you already have (else downloaded).")
@click.option("--user", "user_id", type=int, default=42, show_default=True, help="Whom to recommend for at the end.")
@click.option("--epochs", type=click.IntRange(1), help="Cap on training epochs (default: the model's own).")
@pass_context
def quickstart(obj: Context, path: str | None, user_id: int, epochs: int | None) -> None:
    """Ingest MovieLens 100K, train the default model on fold u1, evaluate it beside the baselines, recommend.

    Works on the default SQLite store with no other setup; run it again and the ingest is skipped.

    \b
    Examples:
      recae quickstart
      recae quickstart --path ~/Downloads/ml-100k.zip
    """
    import dataclasses

    from recae.cli.output import render
    from recae.serving.evaluate_version import evaluate_model
    from recae.serving.publish import train_and_publish
    from recae.serving.recommend import recommend_from_store
    from recae.evaluation.splits import SplitSpec
    from recae.store.ingest import ingest_dataset
    from recae.artifacts.train_config import default_configs

    engine = obj.engine()
    paths = obj.paths()
    echo_info("1/4 ingesting ml-100k ...")
    report = ingest_dataset(engine, "ml-100k", path, downloads_dir=paths.downloads_dir, progress=True)
    echo_info("    already in the store" if report.already_ingested else f"    {report.rows_loaded:,} ratings loaded")
    echo_info("2/4 training the default model on fold u1 ...")
    model_cfg, train_cfg = default_configs()
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    run = train_and_publish(engine, paths.models_dir, SplitSpec("u1"), model_cfg, train_cfg,
                            on_progress=lambda message: echo_info(f"    {message}"))
    if run is None:  # a secondary torchrun rank: rank 0 publishes and reports
        return
    echo_info(f"    published {run.published.version} in {run.result.metrics.get('seconds', 0):.1f} s")
    echo_info("3/4 evaluating on the held-out ratings of u1 ...")
    evaluation = evaluate_model(engine, run.published.version, k=10, models_dir=paths.models_dir)
    echo_data(render(evaluation.rows(), "table", title=f"Test RMSE on u1 (n={evaluation.n_test})"))
    echo_info(f"4/4 recommending for user {user_id} ...")
    recs = recommend_from_store(engine, user_id, 10) or []
    echo_data(render([dataclasses.asdict(r) for r in recs], "table", title=f"Top 10 for user {user_id}"))


@cli.command("train")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES),
              help="Autoencoder to train, or rbm (the RBM for CF) (default: the config file's, else denoising).")
@click.option("--pretrain", type=click.Choice(PRETRAINS),
              help="Greedy layer-wise pretraining of the stack by autoencoders or RBMs (default: config's, else none).")
@click.option("--orientation", type=click.Choice(ORIENTATIONS),
              help="item: each movie's vector over users (I-AutoRec; default); user: each user's over movies.")
@click.option("--split", "split_name", default="random", show_default=True,
              type=LazyChoice(split_names),
              help="Held-out test ratings, stored with the model (u1..u5, ua, ub: canonical ml-100k folds).")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of ratings held out for test (generated splits only).")
@click.option("--test-ratings", "test_ratings", type=click.Path(exists=True, dir_okay=False),
              help="CSV user_id,movie_id,rating (the ingest --ratings format) of stored ratings to hold out as the "
                   "test set instead of a --split; the model keeps the file's path and sha256.")
@click.option("--seed", type=int, help="Seed of the split and the validation carves (default: the config's, else 0).")
@click.option("--init-seed", type=int,
              help="Seed of initialisation, shuffles and dropout (default: --seed): spread over it on a fixed split.")
@click.option("--epochs", type=click.IntRange(min=1), help="Most epochs (default: the config's).")
@click.option("--ensemble", type=click.IntRange(min=1), help="Members averaged into the model (default: config's).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with [model] and [train] tables of settings; flags override it.")
@click.option("--deterministic", is_flag=True, default=None,
              help="Deterministic algorithms and a fixed thread count (reproducible weights).")
@click.option("--device", type=click.Choice(DEVICES), help="Where to train (default auto).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings and data.")
@click.option("--tune", is_flag=True,
              help="First search lambda, hidden units, noise, learning rate, members and the ranker's settings on "
                   "carves of the training part, then train the best; the search is kept with the model.")
@click.option("--budget", type=click.FloatRange(0.0, min_open=True), metavar="MINUTES",
              help="With --tune: minutes for the search and the final training together (default 10).")
@relevant_from_option("the config's relevant_from, else ")
@summary_format_option
@pass_context
def train_command(obj: Context, model_name: str | None, pretrain: str | None, orientation: str | None,
                  split_name: str, test_fraction: float, seed: int | None, init_seed: int | None,
                  test_ratings: str | None,
                  epochs: int | None, ensemble: int | None,
                  config_file: str | None, deterministic: bool | None, device: str | None, resume: bool,
                  tune: bool, budget: float | None, relevant_from: float | None, fmt: str) -> None:
    """Train an autoencoder on the store's ratings, evaluate it on the split's test part, and publish it.

    Validation for early stopping is carved from the training part, never the test part. The new version
    becomes the champion (the model `recae recommend` serves). Progress goes to stderr.

    \b
    Examples:
      recae train                                   # defaults: denoising I-AutoRec, random 90/10 split
      recae train --split u1                        # the canonical ml-100k fold
      recae train --split u1 --init-seed 3          # same split and carves, another initialisation
      recae train --test-ratings heldout.csv        # these stored ratings are the test set, the rest trains
      recae train --split random --test-fraction 0.1 --seed 0 --epochs 50 --deterministic
      recae train --config run.toml --resume        # [model] hidden = [500], [train] lr = 0.002
      recae train --model rbm --split u1            # I-RBM (RBM for CF); --orientation user: U-RBM
      recae train --model stacked --pretrain rbm    # deep AE pretrained as a stack of RBMs, then fine-tuned
      recae train --tune --budget 20                # settings searched on validation carves, 20 minutes in all
    """
    from recae.cli.output import render
    from recae.artifacts.trained_model import model_relevance
    from recae.evaluation.splits import choose_split
    from recae.serving.publish import train_and_publish
    from recae.artifacts.train_config import resolve
    from recae.training.distributed import is_secondary_rank, launched_by_torchrun
    from recae.training.tune import DEFAULT_BUDGET_MINUTES

    if test_ratings is not None:
        refuse_with("--test-ratings", ("split_name", "--split"), ("test_fraction", "--test-fraction"))
    if budget is not None and not tune:
        raise click.UsageError("--budget sets the time of --tune; add --tune")
    if tune and resume:
        raise click.UsageError("--resume continues one run's training; a --tune run searches again: drop one")
    if tune and launched_by_torchrun():
        raise click.UsageError("--tune runs in one process (its search follows the clock); tune first, then "
                               "train the chosen settings under torchrun")
    model_cfg, train_cfg = resolve(config_file, {
        "name": model_name, "orientation": orientation, "pretrain": pretrain, "seed": seed, "init_seed": init_seed,
        "epochs": epochs, "ensemble": ensemble, "deterministic": deterministic, "device": device,
        "relevant_from": relevant_from})
    spec = choose_split(split_name, test_fraction, train_cfg.seed, test_ratings)
    held_out = f"the ratings of {os.path.basename(spec.path)}" if spec.is_file else f"{spec.name} split"

    def announce(split) -> None:  # type: ignore[no-untyped-def]
        echo_info(f"training {model_cfg.name} ({model_cfg.orientation}) on {split.train.nnz} ratings, "
                  f"testing on {split.test.nnz} ({held_out})")

    secondary_rank = is_secondary_rank()  # torchrun: only rank 0 reports and publishes
    budget_s = 60.0 * (budget or DEFAULT_BUDGET_MINUTES) if tune else None
    progress = TrainProgress(train_cfg.epochs, quiet=secondary_rank)
    with progress as (on_epoch, on_progress):
        on_tune_step = progress.budget_bar(budget_s) if budget_s is not None else None
        run = train_and_publish(obj.engine(), obj.paths().models_dir, spec, model_cfg, train_cfg, resume=resume,
                                on_epoch=on_epoch, on_progress=on_progress,
                                on_split=None if secondary_rank else announce, tune_budget_s=budget_s,
                                on_tune_step=on_tune_step)
    if run is None:
        return
    published, result = run.published, run.result
    metrics = result.metrics
    summary = {
        "version": published.version, "model": published.model, "orientation": published.orientation,
        "split": published.split, "best_epoch": metrics.get("best_epoch"), "val_rmse": metrics.get("val_rmse"),
        "test_rmse": metrics.get("test_rmse"), "test_mae": metrics.get("test_mae"),
        "test_ndcg@10": metrics.get("test_ndcg@10"), "relevant_from": model_relevance(result.trained),
        "ranker_lambda": metrics.get("ranker_lambda"),
        "seconds": metrics.get("seconds"), "champion": published.is_champion,
    }
    if result.trained.svd is not None:  # blend_svd: the mix's weights, intercept, the SVD's own blend-carve RMSE
        summary.update({key: metrics[key] for key in (
            "blend_weight_main", "blend_weight_partner", "blend_weight_svd", "blend_weight_side", "blend_intercept",
            "svd_val_rmse") if key in metrics})  # no partner weight when partner_members = 0, no side without genres
    if result.trained.tune_search:
        summary["tuned"] = tune_summary(result.trained.tune_search)
    echo_data(render(summary, fmt) if fmt == "json" else render(
        [{"field": k, "value": v} for k, v in summary.items()], "table", title="train"))


@cli.command("vae")
@click.option("--heldout-users", "heldout", type=CountOrShare(), default="0.1", show_default=True,
              help="Validation users, and again test users, never trained on: a count (600) or a share of users.")
@click.option("--threshold", type=float,
              help="A rating above this counts as a liked film (default: from 0.8 x the top rating on, as evaluate "
                   "counts relevance: four stars and up on 1-5 and 0.5-5, the paper's > 3.5).")
@click.option("--hide-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of each held-out user's liked films hidden and ranked (the rest read).")
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Most epochs (early stopping on validation NDCG@100 keeps the best).")
@click.option("--patience", type=click.IntRange(min=0), default=30, show_default=True,
              help="Stop after this many epochs without a better validation NDCG@100 (0: never).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the user split and training.")
@click.option("--batch-users", type=click.IntRange(min=1), default=500, show_default=True, help="Users per step.")
@click.option("--beta-cap", type=click.FloatRange(min=0.0), default=0.2, show_default=True,
              help="Largest weight of the KL term.")
@click.option("--anneal-steps", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="Gradient steps over which the KL weight grows linearly from 0 to --beta-cap.")
@click.option("--hidden", type=click.IntRange(min=1), default=600, show_default=True, help="Hidden layer width.")
@click.option("--latent", type=click.IntRange(min=1), default=200, show_default=True, help="Latent dimension.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where to train.")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="New folder for the model (default: HOME/models/vae/<version>).")
@format_option
@pass_context
def vae_command(obj: Context, heldout: float, threshold: float | None, hide_fraction: float, epochs: int, patience: int,
                seed: int, batch_users: int, beta_cap: float, anneal_steps: int, hidden: int, latent: int,
                device: str, out: str | None, fmt: str) -> None:
    """Train Mult-VAE (Liang et al. 2018) for top-N on the liked films in the store; compare with popularity.

    Liked films become clicks (see --threshold). Users are split into training, validation and test users; for
    each held-out user the model reads their clicks but a hidden --hide-fraction (20%) and ranks every other
    film. Prints Recall@20, Recall@100 (hits / min(k, hidden)), NDCG@20 and NDCG@100 on the test users for
    Mult-VAE and for ranking by popularity, and saves the model (safetensors + meta.json). Progress: stderr.

    \b
    Examples:
      recae vae                                     # 10% validation + 10% test users, 200 epochs at most
      recae vae --heldout-users 600 --epochs 100 --seed 1 --format json
      recae vae --beta-cap 0.3 --anneal-steps 2000 --out ./my-vae
    """
    from pathlib import Path

    from recae.cli.output import render
    from recae.artifacts.multvae_files import new_version_name, save_multvae
    from recae.models.multvae import MultVAEConfig, MultVAETrainConfig
    from recae.store.matrix import RatingMatrix
    from recae.training.multvae import train_and_evaluate

    config = MultVAEConfig(hidden=hidden, latent=latent)
    train_config = MultVAETrainConfig(epochs=epochs, patience=patience, seed=seed, batch_users=batch_users,
                                      beta_cap=beta_cap, total_anneal_steps=anneal_steps, device=device)
    config.validate()
    train_config.validate()
    matrix = RatingMatrix.from_db(obj.engine())

    def announce(split) -> None:  # type: ignore[no-untyped-def]
        echo_info(f"Mult-VAE: {split.train.shape[0]} training users ({split.train.nnz} liked films), "
                  f"{split.validation.n_users} validation and {split.test.n_users} test users, "
                  f"{split.n_items} films")

    with TrainProgress(epochs, metric="val NDCG@100", label="Mult-VAE", fields=lambda r: (
            f"{r.loss:.2f}", f"{r.val_ndcg:.4f}", f"{r.best_val_ndcg:.4f}@{r.best_epoch}")) as (on_epoch, _):
        run = train_and_evaluate(matrix, threshold=threshold, heldout=heldout, hidden_fraction=hide_fraction,
                                 config=config, train_config=train_config, on_split=announce, on_epoch=on_epoch)
    folder = Path(out) if out else obj.paths().models_dir / "vae" / new_version_name()
    save_multvae(run.trained, folder)
    echo_info(f"best epoch {run.fit.best_epoch} of {len(run.fit.history)} "
              f"({run.fit.seconds_per_epoch:.2f} s/epoch); model saved in {folder}")
    echo_data(render(run.rows(), fmt, title=f"Top-N on {run.test.n_users} test users"))
