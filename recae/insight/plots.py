"""PNG figures of how a model trained and what it learned: learning curves, the latent map, error by activity.

The data behind each figure is prepared by a pure function (``curve_members``, ``errors_by_activity``, and
``recae.insight.latent``); the ``plot_*`` functions only draw, with matplotlib's headless Agg backend, imported
when first needed (``pip install "recae[plot]"``). Each PNG is written to a temporary name beside the target
and moved into place, so a failed plot never leaves half a file.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recae.errors import EmptyStoreError, RecaeError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recae.artifacts.trained_model import TrainedModel
    from recae.insight.latent import Colouring, LatentMap, Separation
    from recae.store.matrix import RatingMatrix

log = logging.getLogger(__name__)

DPI = 100
#: Bucket edges for ``errors_by_activity``: a user with n training ratings falls in [edge_i, edge_{i+1}).
ACTIVITY_EDGES = (1, 10, 20, 40, 80, 160, 320, 640, 1280)
MAX_DRAWN_POINTS = 20_000  # a seeded sample beyond this; more dots add ink, not information
_TOP_LABELS = 9  # categories drawn in their own colour; the rest are "other"


@dataclass(frozen=True)
class PlotFile:
    """A PNG written to disk."""

    path: str
    bytes: int
    width: int  # pixels
    height: int


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend; a one-line RecaeError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise RecaeError('plotting needs matplotlib; install it with: pip install "recae[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_png_path(out: str | Path) -> Path:
    """``out`` as a Path; RecaeError unless it names a .png file in an existing folder."""
    target = Path(out).expanduser()
    if target.suffix.lower() != ".png":
        raise RecaeError(f"{target.name!r} is not a .png file name; plots are written as PNG (--out FILE.png)")
    if not target.parent.is_dir():
        raise RecaeError(f"folder {target.parent} does not exist")
    return target


def _save(fig: Any, out: str | Path) -> PlotFile:
    plt = _pyplot()
    target = check_png_path(out)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(temp, format="png", dpi=DPI)
        os.replace(temp, target)
    except OSError as err:
        raise RecaeError(f"cannot write {target}: {err.strerror or err}") from err
    finally:
        temp.unlink(missing_ok=True)
        width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
        plt.close(fig)
    return PlotFile(path=str(target), bytes=target.stat().st_size, width=width, height=height)


# --- learning curves -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvesPlot:
    """The learning-curves figure and the run it shows."""

    file: PlotFile
    members: int  # training runs drawn (ensemble members; 1 for a single model)
    epochs: int  # epochs over all members
    best_epoch: int  # of the last member
    best_val_rmse: float  # of the last member


def curve_members(history: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    """Split a history into one list per training run: an ensemble's members follow each other, each starting
    again at epoch 1."""
    members: list[list[dict[str, float]]] = []
    for record in history:
        if not members or int(record["epoch"]) <= int(members[-1][-1]["epoch"]):
            members.append([])
        members[-1].append(record)
    return members


def plot_curves(history: list[dict[str, float]], out: str | Path, title: str | None = None) -> CurvesPlot:
    """Training loss (masked MSE) and validation RMSE per epoch, one line per member, the best epoch marked.

    Raises RecaeError when the history is empty (a model published before histories were recorded).
    """
    if not history:
        raise RecaeError("this model has no training history (published before recae recorded it); "
                         "retrain with `recae train` to plot its curves")
    check_png_path(out)
    members = curve_members(history)
    plt = _pyplot()
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, member in enumerate(members):
        label = f"member {i + 1}" if len(members) > 1 else None
        epochs = [r["epoch"] for r in member]
        line = loss_ax.plot(epochs, [r["train_loss"] for r in member], label=label)[0]
        val = [r["val_rmse"] for r in member]
        val_ax.plot(epochs, val, color=line.get_color(), label=label)
        best = member[-1]
        if math.isfinite(best.get("best_val_rmse", math.nan)):
            val_ax.scatter([best["best_epoch"]], [best["best_val_rmse"]], color=line.get_color(), zorder=3,
                           marker="o", s=30)
    loss_ax.set(xlabel="epoch", ylabel="training loss (masked MSE)", title="Training loss")
    val_ax.set(xlabel="epoch", ylabel="validation RMSE", title="Validation RMSE (dot: best epoch, kept)")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    last = members[-1][-1]
    return CurvesPlot(file=_save(fig, out), members=len(members), epochs=len(history),
                      best_epoch=int(last.get("best_epoch", 0)),
                      best_val_rmse=float(last.get("best_val_rmse", math.nan)))


# --- error by activity -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorBucket:
    """Held-out error of the users with ``low <= training ratings < high``."""

    low: int
    high: int | None  # None: no upper bound
    n_users: int  # users with held-out ratings in the bucket
    n_ratings: int  # held-out ratings scored
    rmse: float  # sqrt(mean((rhat - r)^2)) over the bucket's held-out ratings
    mae: float  # mean(|rhat - r|)

    @property
    def label(self) -> str:
        return f"{self.low}+" if self.high is None else f"{self.low}-{self.high - 1}"


def held_out_ratings(engine: Engine, trained: TrainedModel) -> RatingMatrix:
    """The model's test ratings: its split rebuilt from the store, on the model's index, minus anything it read."""
    from recae.evaluation.evaluate import held_out_for_model
    from recae.evaluation.splits import SplitSpec, split_from_store
    from recae.store.matrix import RatingMatrix

    if not trained.split_spec:
        raise RecaeError("this model records no split, so its held-out ratings are unknown; retrain it")
    rebuilt = split_from_store(engine, RatingMatrix.from_db(engine), SplitSpec.from_json(trained.split_spec))
    test, _ = held_out_for_model(rebuilt.test, trained.inputs)
    if test.nnz == 0:
        raise EmptyStoreError("the model's split leaves no held-out ratings it has not seen")
    return test


def errors_by_activity(trained: TrainedModel, test: RatingMatrix,
                       edges: tuple[int, ...] = ACTIVITY_EDGES) -> list[ErrorBucket]:
    """Held-out RMSE and MAE grouped by how many training ratings each user has (non-empty buckets only).

    ``test`` must share the model's IdIndex (see ``held_out_ratings``). Cost O(held-out ratings).
    """
    rows, cols, values = test.coo()
    if rows.size == 0:
        return []
    error = trained.predict(rows, cols).astype(np.float64) - values.astype(np.float64)  # (n_test,)
    activity = np.diff(trained.inputs.csr.indptr)[rows]  # (n_test,) training ratings of each rating's user
    bucket = np.searchsorted(np.asarray(edges), activity, side="right") - 1  # -1: fewer than edges[0]
    out = []
    for b in range(-1, len(edges)):
        chosen = bucket == b
        if not chosen.any():
            continue
        low = 0 if b < 0 else edges[b]
        high = edges[0] if b < 0 else (edges[b + 1] if b + 1 < len(edges) else None)
        e = error[chosen]
        out.append(ErrorBucket(low=low, high=high, n_users=int(np.unique(rows[chosen]).size),
                               n_ratings=int(e.size), rmse=float(np.sqrt(np.mean(e**2))),
                               mae=float(np.mean(np.abs(e)))))
    return out


def plot_errors(buckets: list[ErrorBucket], out: str | Path, title: str | None = None) -> PlotFile:
    """Bars of held-out RMSE per activity bucket, each labelled with its number of users; the overall RMSE as a
    dashed line."""
    if not buckets:
        raise EmptyStoreError("no held-out ratings to plot")
    check_png_path(out)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(buckets))
    bars = ax.bar(x, [b.rmse for b in buckets], color="#4c72b0")
    for bar, b in zip(bars, buckets, strict=True):
        ax.annotate(f"{b.n_users} users", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="small")
    n = sum(b.n_ratings for b in buckets)
    overall = math.sqrt(sum(b.rmse**2 * b.n_ratings for b in buckets) / n)
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all users: {overall:.3f}")
    ax.set_xticks(x, [b.label for b in buckets])
    ax.set(xlabel="training ratings of the user", ylabel="held-out RMSE",
           title=title or f"Error by user activity ({n:,} held-out ratings)")
    ax.legend(loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


# --- the latent map --------------------------------------------------------------------------------------------


def _top_labels(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Labels with all but the most frequent ``_TOP_LABELS`` folded into "other" (unlabelled stay None)."""
    present = [v for v in values if v is not None]
    names, counts = np.unique(np.asarray(present, dtype=str), return_counts=True) if present else ([], [])
    top = [str(n) for _, n in sorted(zip(-np.asarray(counts), names, strict=True))][:_TOP_LABELS]
    folded = np.array([None if v is None else (v if v in top else "other") for v in values], dtype=object)
    return folded, top + (["other"] if any(v == "other" for v in folded) else [])


def plot_latent(latent: LatentMap, colouring: Colouring, out: str | Path, *,
                separation: Separation | None = None, title: str | None = None,
                max_points: int = MAX_DRAWN_POINTS, seed: int = 0) -> PlotFile:
    """Two scatter plots side by side: the autoencoder's 2-D map and PCA of the raw ratings, same colours.

    Categories get their own colour (the most frequent nine; the rest "other", unlabelled points grey); numbers a
    colour scale. With ``separation`` each panel's title carries its kNN accuracy and silhouette.
    """
    check_png_path(out)
    plt = _pyplot()
    n = latent.ids.size
    shown = np.arange(n)
    if n > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    code_note = ("its 2-unit code" if latent.code_dims == 2 and latent.source == "code layer"
                 else f"PCA of its {latent.code_dims}-d {latent.source}")
    panels = [(axes[0], latent.autoencoder, f"Autoencoder ({code_note})", "autoencoder"),
              (axes[1], latent.pca, "PCA of the raw ratings", "pca")]
    for ax, points, label, key in panels:
        xy = points[shown]
        if colouring.categorical:
            folded, order = _top_labels(colouring.values[shown])
            none = np.array([v is None for v in folded])
            if none.any():
                ax.scatter(xy[none, 0], xy[none, 1], s=6, color="lightgrey", label="no label", rasterized=True)
            palette = plt.get_cmap("tab10")
            hues = [palette(j) for j in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey ("other" is grey)
            for i, name in enumerate(order):
                chosen = np.array([v == name for v in folded])
                colour = "darkgrey" if name == "other" else hues[i % len(hues)]
                ax.scatter(xy[chosen, 0], xy[chosen, 1], s=8, color=colour, alpha=0.75, label=name, rasterized=True)
        else:
            values = colouring.values[shown]
            drawn = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=8, cmap="viridis", alpha=0.8, rasterized=True)
            bar_label = "log10(training ratings)" if colouring.name == "activity" else colouring.name
            fig.colorbar(drawn, ax=ax, label=bar_label)
        if separation is not None:
            knn = getattr(separation, f"knn_{key}")
            sil = getattr(separation, f"silhouette_{key}")
            label += f"\n{separation.k}-NN accuracy {knn:.2f}, silhouette {sil:.2f}"
        ax.set_title(label, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    if colouring.categorical:
        axes[1].legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title or f"{latent.side.capitalize()} in two dimensions, coloured by {colouring.name} "
                          f"({n:,} points{'' if shown.size == n else f', {shown.size:,} drawn'})")
    fig.tight_layout()
    return _save(fig, out)
