"""The published models: list them, show one (its --tune search too), choose the champion, prune.

``recae models history`` (past retrain runs) registers on this group from ``recae.cli.retrain``.
"""

from __future__ import annotations

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.options import format_option
from recae.cli.tuning import tune_summary, tune_tables


@cli.group()
def models() -> None:
    """See the published models, choose which one serves, prune old or orphaned ones.

    \b
    Examples:
      recae models list
      recae models show            # the champion
      recae models use 20261123-101500-stacked
      recae models prune --keep 5
    """


@models.command("list")
@format_option
@pass_context
def models_list(obj: Context, fmt: str) -> None:
    """List published model versions, newest first; * marks the champion.

    \b
    Example:
      recae models list --format json
    """
    from recae.cli.output import render
    from recae.serving.registry import list_versions

    versions = list_versions(obj.engine())
    if not versions:
        echo_info("no models published yet; run `recae train`")
    echo_data(render([v.summary() for v in versions], fmt, title="Models"))


@models.command("show")
@click.argument("version", required=False)
@format_option
@pass_context
def models_show(obj: Context, version: str | None, fmt: str) -> None:
    """Show one version's metrics and configuration (default: the champion).

    \b
    Example:
      recae models show 20261123-101500-stacked --format json
    """
    from dataclasses import asdict, replace

    from recae.cli.output import render
    from recae.serving.registry import get_version, version_folder

    info = get_version(obj.engine(), version)
    info = replace(info, path=str(version_folder(info.path, obj.paths().models_dir)))
    record = asdict(info)
    if fmt != "json":
        config = {k: v for k, v in info.config.items() if k != "tune"}
        record = {**info.summary(), "path": info.path, "metrics": info.metrics, "config": config}
        if info.config.get("tune"):
            record["tune"] = tune_summary(info.config["tune"])
    echo_data(render(record, fmt, title=f"Model {info.version}"))
    if fmt == "table" and info.config.get("tune"):
        echo_data(tune_tables(info.config["tune"]))


@models.command("use")
@click.argument("version")
@pass_context
def models_use(obj: Context, version: str) -> None:
    """Make VERSION the champion that serves recommendations (rollback).

    \b
    Example:
      recae models use 20261122-020000-stacked
    """
    from recae.serving.registry import use_version

    info = use_version(obj.engine(), version)
    echo_info(f"model {info.version} now serves recommendations")


@models.command("prune")
@click.option("--keep", type=click.IntRange(min=1),
              help="Also delete all but the newest KEEP versions (never the champion): folder, recommendations, row.")
@pass_context
def models_prune(obj: Context, keep: int | None) -> None:
    """Delete model folders no version row names (a publish killed before it recorded its version) and, with
    --keep, old versions. A publish still in progress in another process keeps its folder.

    \b
    Examples:
      recae models prune
      recae models prune --keep 5
    """
    from recae.serving.registry import prune_versions, remove_orphans

    engine, models_dir = obj.engine(), obj.paths().models_dir
    removed = prune_versions(engine, models_dir, keep) if keep is not None else remove_orphans(engine, models_dir)
    for version in removed:
        echo_data(version)
    echo_info(f"removed {len(removed)} model folder{'' if len(removed) == 1 else 's'}" if removed
              else "nothing to prune")
