"""The walkthrough notebook runs end to end (on small synthetic data) and is committed without outputs."""

from __future__ import annotations

import base64
import time
from pathlib import Path

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


@pytest.mark.slow
def test_the_walkthrough_runs_on_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    ratings = tmp_path / "ratings.csv"
    write_csv(generate(SynthSpec(n_users=150, n_movies=120, n_ratings=6000, seed=3)), ratings)
    home = tmp_path / "home"
    monkeypatch.setenv("RECAE_NOTEBOOK_DATA", str(ratings))
    monkeypatch.setenv("RECAE_HOME", str(home))
    monkeypatch.setenv("RECAE_NOTEBOOK_EPOCHS", "4")
    monkeypatch.setenv("RECAE_NOTEBOOK_HIDDEN", "24")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook ran in {time.perf_counter() - started:.1f} s")  # shown with -s; never asserted

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, latent map, errors by activity
    assert all(base64.b64decode(o["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" for o in images)
    for name in ("curves.png", "latent.png", "errors.png"):
        assert (home / "figures" / name).stat().st_size > 10_000
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for c in code
                   for o in c.outputs)
    assert "6,000 ratings loaded" in text
    assert "global_mean" in text and "svd" in text  # evaluated beside the baselines
    assert "z_score" in text and "predicted_rating" in text  # anomalies and recommendations were listed
    codes = (home / "figures" / "movie_codes.csv").read_text().splitlines()
    assert codes[0].startswith("movie_id,n_ratings,code_0") and len(codes) == 1 + 120
