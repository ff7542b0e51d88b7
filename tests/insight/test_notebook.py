"""The walkthrough notebook runs end to end (on small synthetic data, and on ml-100k when present) and is committed
without outputs."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import pytest

from recae.ratings_csv import write_csv
from recae.synth import SynthSpec, generate

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "walkthrough.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "the walkthrough has no code cells"
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert all("import recae" in c.source or "from recae" in c.source for c in code[:1])
    # the work goes through the Python API (`recae.open_store`, `recae.train`); only the insight figures and lists
    # import a room of the package
    deep = [line for c in code for line in c.source.splitlines() if line.startswith(("from recae.", "import recae."))]
    assert all(line.startswith("from recae.insight.") for line in deep), deep


def run_notebook(monkeypatch: pytest.MonkeyPatch, data: Path, home: Path, **settings: str) -> list[Any]:
    """Run the walkthrough top to bottom on ``data`` into ``home``; its code cells, with their outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("RECAE_NOTEBOOK_DATA", str(data))
    monkeypatch.setenv("RECAE_HOME", str(home))
    for name, value in settings.items():
        monkeypatch.setenv(f"RECAE_NOTEBOOK_{name.upper()}", value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook ran in {time.perf_counter() - started:.1f} s")  # shown with -s; never asserted
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)
    return code


def printed(code: list[Any]) -> str:
    return "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for c in code
                   for o in c.outputs)


@pytest.mark.slow
def test_the_walkthrough_runs_on_ml100k(ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walkthrough as a reader runs it, on the real data (skipped without ../shared/data), epochs capped."""
    text = printed(run_notebook(monkeypatch, ml100k, tmp_path / "home", epochs="20"))
    assert "100,000 ratings loaded" in text and re.search(r"\w \(19\d\d\)", text)  # lists with their titles
    assert "global_mean" in text and "film mean" in text


@pytest.mark.slow
def test_the_walkthrough_runs_on_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ratings = tmp_path / "ratings.csv"
    write_csv(generate(SynthSpec(n_users=150, n_movies=120, n_ratings=6000, seed=3)), ratings)
    home = tmp_path / "home"
    code = run_notebook(monkeypatch, ratings, home, epochs="4", hidden="24")
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, latent map, errors by activity
    assert all(base64.b64decode(o["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" for o in images)
    for name in ("curves.png", "latent.png", "errors.png"):
        assert (home / "figures" / name).stat().st_size > 10_000
    text = printed(code)
    assert "6,000 ratings loaded" in text
    assert "global_mean" in text and "svd" in text  # evaluated beside the baselines
    assert "z_score" in text and "predicted_rating" in text  # anomalies and recommendations were listed
    assert "similarity" in text and "film mean" in text and "test RMSE" in text  # similar films; recae.train
    codes = (home / "figures" / "movie_codes.csv").read_text().splitlines()
    assert codes[0].startswith("movie_id,n_ratings,code_0") and len(codes) == 1 + 120
