"""Export latent codes of users or movies to CSV or Parquet, for other tools (clustering, search, dashboards).

One row per user or movie of the model: the external id (``user_id`` or ``movie_id``), the number of training
ratings, then ``code_0 .. code_{k-1}``. Which layer the codes come from is explained in ``recae.insight.latent`` (the
code layer for the side the model encodes, the output weights for the other side). The file is written to a
temporary name beside the target and moved into place, so a failed export never leaves half a file.
CSV always works; Parquet needs pyarrow (``pip install "recae[export]"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recae.errors import RecaeError
from recae.insight.latent import latent_codes, raw_vectors

if TYPE_CHECKING:
    from recae.artifacts.trained_model import TrainedModel

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class EmbedReport:
    """What was written."""

    path: str
    file_format: str  # csv | parquet
    side: str  # users | movies
    rows: int
    dims: int
    source: str  # code layer | output weights
    bytes: int


def file_format(path: str | Path) -> str:
    """``csv`` or ``parquet`` from the file's suffix; RecaeError naming the allowed suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise RecaeError(f"cannot tell the format of {Path(path).name!r}; name it FILE.csv or FILE.parquet")
    return FORMATS[suffix]


def codes_frame(trained: TrainedModel, side: str) -> tuple[pd.DataFrame, str]:
    """The codes as a DataFrame (id, n_ratings, code_0..) and where they come from."""
    codes = latent_codes(trained, side)
    counts = np.diff(raw_vectors(trained, side).indptr).astype(np.int64)  # (n,) training ratings of each
    id_column = "user_id" if side == "users" else "movie_id"
    frame = pd.DataFrame(codes.codes, columns=[f"code_{j}" for j in range(codes.codes.shape[1])])
    frame.insert(0, "n_ratings", counts)
    frame.insert(0, id_column, codes.ids)
    return frame, codes.source


def export_codes(trained: TrainedModel, side: str, path: str | Path) -> EmbedReport:
    """Write ``side``'s codes to ``path`` (.csv, or .parquet with pyarrow) atomically."""
    target = Path(path).expanduser()
    fmt = file_format(target)
    if not target.parent.is_dir():
        raise RecaeError(f"folder {target.parent} does not exist")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RecaeError('writing Parquet needs pyarrow; install it with: pip install "recae[export]" '
                             "(or write FILE.csv)") from None
    frame, source = codes_frame(trained, side)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            frame.to_csv(temp, index=False, float_format="%.7g")
        else:
            frame.to_parquet(temp, index=False, engine="pyarrow")
        os.replace(temp, target)
    except OSError as err:
        raise RecaeError(f"cannot write {target}: {err.strerror or err}") from err
    finally:
        temp.unlink(missing_ok=True)
    return EmbedReport(path=str(target), file_format=fmt, side=side, rows=len(frame),
                       dims=frame.shape[1] - 2, source=source, bytes=target.stat().st_size)
