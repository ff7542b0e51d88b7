"""The nightly job: ``retrain`` (ingest the inbox, challenge the champion) and ``models history`` of its runs."""

from __future__ import annotations

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.models import models
from recae.cli.options import format_option, rating_scale_options


@cli.command("retrain")
@click.option("--inbox", type=click.Path(file_okay=False),
              help="Folder of new ratings files (CSV user_id,movie_id,rating[,timestamp]); default HOME/inbox.")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.002, show_default=True,
              help="Publish the challenger only if its held-out RMSE is lower than the champion's by this much.")
@click.option("--ndcg-margin", type=click.FloatRange(min=0.0), default=0.005, show_default=True,
              help="... and only if its held-out NDCG@10 is not lower than the champion's by more than this.")
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True,
              help="Published versions to keep for rollback (the champion always stays); older ones are pruned.")
@click.option("--warm-epochs", type=click.IntRange(min=1),
              help="Most fine-tuning epochs when warm-starting from the champion (early stopping still applies; "
                   "default 10, fewer above 5M ratings where training's own epochs are capped).")
@click.option("--warm-lr-scale", type=click.FloatRange(min=0.0, min_open=True), default=0.02, show_default=True,
              help="Fine-tuning learning rate as a multiple of the champion's training rate.")
@click.option("--cold", is_flag=True, help="Train the challenger from scratch with the champion's configuration.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML [model]/[train] settings for the first champion (when none is published yet).")
@rating_scale_options("inbox files")
@pass_context
def retrain_command(obj: Context, inbox: str | None, margin: float, ndcg_margin: float, keep: int,
                    warm_epochs: int | None, warm_lr_scale: float, cold: bool, config_file: str | None, scale: tuple[float, float],
                    step: float) -> None:
    """Nightly job: ingest the inbox, retrain, publish the challenger only if it beats the champion.

    Takes a lock (a second run at the same time exits at once with code 75); moves each inbox file to
    inbox/processed/ or, with a FILE.reason.txt, to inbox/rejected/; exits 0 without training when no rating
    changed; otherwise fine-tunes the champion on the new data (and refits its ranker), compares both on the same
    fixed holdout, and publishes atomically when RMSE drops by at least --margin and NDCG@10 drops by at most
    --ndcg-margin. Prints one JSON summary line on stdout;
    `recae models history` lists past runs. With no champion yet, trains and publishes the first one.

    \b
    Examples:
      recae retrain
      recae retrain --inbox /srv/ratings/inbox --margin 0.002 --keep 5
      recae --home /var/lib/recae retrain >> /var/log/recae-retrain.jsonl
    """
    import json
    from pathlib import Path

    from recae.retrain.job import RetrainOptions, run_retrain

    model_cfg = train_cfg = None
    if config_file:
        from recae.artifacts.train_config import resolve

        model_cfg, train_cfg = resolve(config_file)
    paths = obj.paths()
    options = RetrainOptions(inbox=Path(inbox) if inbox else paths.home / "inbox", margin=margin,
                             ndcg_margin=ndcg_margin, keep=keep,
                             warm_epochs=warm_epochs or 0, warm_lr_scale=warm_lr_scale, cold=cold, scale=scale,
                             step=step or None,
                             model_config=model_cfg, train_config=train_cfg)
    run_retrain(obj.engine(), paths.models_dir, paths.locks_dir, options,
                on_progress=lambda message: echo_info(f"retrain: {message}"),
                on_report=lambda report: echo_data(json.dumps(report.to_json(), separators=(",", ":"))))


@models.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
@format_option
@pass_context
def models_history(obj: Context, limit: int, fmt: str) -> None:
    """Past `recae retrain` runs, newest first: files ingested, RMSEs, decision, duration.

    \b
    Examples:
      recae models history
      recae models history --limit 5 --format json
    """
    from recae.cli.output import render
    from recae.retrain.runs import run_history

    records = run_history(obj.engine(), limit)
    if not records:
        echo_info("no retrain runs yet; run `recae retrain`")
    if fmt == "json":
        echo_data(render([r.summary or r.row() for r in records], fmt))
    else:
        rows = [r.row() for r in records]
        if fmt == "table":  # the message is long; json and csv keep it
            rows = [{k: v for k, v in row.items() if k != "message"} for row in rows]
        echo_data(render(rows, fmt, title="Retrain runs"))
