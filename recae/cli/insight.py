"""Looking into a model: ``plot`` figures, ``anomalies`` (worst-rebuilt users), ``embed`` (latent codes out)."""

from __future__ import annotations

from typing import Any

import click

from recae.cli.app import Context, cli, echo_data, echo_info, pass_context
from recae.cli.options import format_option, png_option, side_options, version_option


def _plot_summary(record: dict[str, Any], fmt: str, title: str) -> None:
    from recae.cli.output import render

    echo_data(render(record, fmt) if fmt == "json" else render(
        [{"field": k, "value": v} for k, v in record.items()], fmt, title=title))


@cli.group("plot")
def plot_group() -> None:
    """Draw PNG figures of a model: learning curves, the latent space, error by user activity.

    Needs matplotlib: pip install "recae[plot]". Each command prints what it drew on stdout.

    \b
    Examples:
      recae plot curves --out curves.png
      recae plot latent --movies --out movies.png
      recae plot errors --out errors.png
    """


@plot_group.command("curves")
@png_option("curves.png")
@version_option()
@format_option
@pass_context
def plot_curves_command(obj: Context, out: str, version: str | None, fmt: str) -> None:
    """Training loss and validation RMSE per epoch (one line per ensemble member; dot: the epoch kept).

    \b
    Examples:
      recae plot curves
      recae plot curves --model 20261123T101500000000Z-denoising-item --out run.png
    """
    from dataclasses import asdict

    from recae.insight.plots import check_png_path, plot_curves

    check_png_path(out)
    _, trained = obj.load_model(version)
    drawn = plot_curves(trained.history, out, title=f"{trained.model_config.name} ({trained.orientation})")
    _plot_summary({**asdict(drawn.file), "members": drawn.members, "epochs": drawn.epochs,
                   "best_epoch": drawn.best_epoch, "best_val_rmse": drawn.best_val_rmse}, fmt, "plot curves")


@plot_group.command("latent")
@side_options
@click.option("--colour", "--color", "colour", type=click.Choice(["auto", "genre", "activity", "mean-rating"]),
              default="auto", show_default=True,
              help="What colours the points: genre (movies; each film's least common genre), activity "
                   "(number of ratings), mean-rating; auto = genre for movies when known, else activity.")
@click.option("--genre", help="Colour films of this genre against the rest (e.g. Horror).")
@png_option("latent.png")
@version_option()
@format_option
@pass_context
def plot_latent_command(obj: Context, side: str, colour: str, genre: str | None, out: str, version: str | None,
                        fmt: str) -> None:
    """Users or movies in two dimensions from the model's latent codes, beside PCA of the raw ratings.

    The side the model encodes (movies for item models, users for user models) is shown from its code layer
    (as is when it has 2 units, else by its first two principal components); the other side from its rows of
    output weights. With categories (genres) each panel reports its 10-NN accuracy and silhouette: how well the
    map separates them. As in Hinton and Salakhutdinov (2006), Science 313:504.

    \b
    Examples:
      recae plot latent --out movies.png
      recae plot latent --movies --genre Horror --out horror.png
      recae plot latent --users --colour mean-rating --out users.png
    """
    from dataclasses import asdict

    from recae.insight.latent import colouring, latent_map, separation
    from recae.insight.plots import check_png_path, plot_latent

    check_png_path(out)
    engine, trained = obj.load_model(version)
    latent = latent_map(trained, side)
    colours = colouring(engine, latent, colour, genre)
    if colours.note:
        echo_info(f"note: {colours.note}")
    scores = separation(latent, colours.values) if colours.categorical else None
    drawn = plot_latent(latent, colours, out, separation=scores)
    record: dict[str, Any] = {**asdict(drawn), "side": side, "points": int(latent.ids.size),
                              "source": latent.source, "code_dims": latent.code_dims, "colour": colours.name}
    if scores is not None:
        record.update({"knn_accuracy_autoencoder": scores.knn_autoencoder, "knn_accuracy_pca": scores.knn_pca,
                       "silhouette_autoencoder": scores.silhouette_autoencoder,
                       "silhouette_pca": scores.silhouette_pca, "scored_points": scores.n_points})
    _plot_summary(record, fmt, "plot latent")


@plot_group.command("errors")
@png_option("errors.png")
@version_option()
@format_option
@pass_context
def plot_errors_command(obj: Context, out: str, version: str | None, fmt: str) -> None:
    """Held-out RMSE by how many training ratings a user has (users with few ratings are the hard ones).

    Scores the model's own held-out ratings (its split, rebuilt from the store) and prints one row per bucket.

    \b
    Examples:
      recae plot errors
      recae plot errors --out errors.png --format csv
    """
    from dataclasses import asdict

    from recae.cli.output import render
    from recae.insight.plots import check_png_path, errors_by_activity, held_out_ratings, plot_errors

    check_png_path(out)
    engine, trained = obj.load_model(version)
    buckets = errors_by_activity(trained, held_out_ratings(engine, trained))
    drawn = plot_errors(buckets, out)
    echo_info(f"wrote {drawn.path} ({drawn.bytes:,} bytes, {drawn.width}x{drawn.height})")
    rows = [{"ratings": b.label, **{k: v for k, v in asdict(b).items() if k not in ("low", "high")}}
            for b in buckets]
    echo_data(render(rows, fmt, title="Held-out error by user activity"))


@cli.command("anomalies")
@click.option("-n", "n", type=click.IntRange(1, 100_000), default=20, show_default=True, help="How many users.")
@click.option("--min-ratings", type=click.IntRange(min=1), default=20, show_default=True,
              help="Skip users with fewer training ratings (their error is too noisy to rank).")
@version_option()
@format_option
@pass_context
def anomalies_command(obj: Context, n: int, min_ratings: int, version: str | None, fmt: str) -> None:
    """Users whose ratings the model rebuilds worst: candidate bots, shilling profiles or data errors.

    Each user's error is the RMSE of the model's reconstruction of their own training ratings; the z-score
    compares it with every user scored. A high score is a reason to look, not proof.

    \b
    Examples:
      recae anomalies
      recae anomalies -n 50 --min-ratings 50 --format csv
    """
    from dataclasses import asdict

    from recae.cli.output import render
    from recae.insight.anomalies import find_anomalies

    _, trained = obj.load_model(version)
    found = find_anomalies(trained, n, min_ratings)
    echo_data(render([asdict(a) for a in found], fmt, title=f"Worst-rebuilt {len(found)} users"))


@cli.command("embed")
@side_options
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True),
              help="FILE.csv or FILE.parquet (Parquet needs pyarrow); default SIDE-codes.csv.")
@version_option()
@format_option
@pass_context
def embed_command(obj: Context, side: str, out: str | None, version: str | None, fmt: str) -> None:
    """Export the latent code of every user or movie (id, n_ratings, code_0..) for other tools.

    Codes come from the code layer for the side the model encodes (movies for item models) and from the
    output weights for the other side.

    \b
    Examples:
      recae embed --movies --out movie_codes.parquet
      recae embed --users --out user_codes.csv
    """
    from dataclasses import asdict

    from recae.insight.embed import export_codes, file_format

    target = out or f"{side}-codes.csv"
    file_format(target)
    _, trained = obj.load_model(version)
    report = export_codes(trained, side, target)
    _plot_summary(asdict(report), fmt, "embed")
