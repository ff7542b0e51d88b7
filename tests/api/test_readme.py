"""The README's Python API examples run as written: the DataFrame one always (on planted ratings written where it
reads them), the ml-100k one on the real data (given its path instead of downloading), and there the figures and
lists equal the commands' on the same home and split."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recae.cli import cli
from tests.api.conftest import planted_ratings

README = Path(__file__).resolve().parents[2] / "README.md"


def python_examples() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python API\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def run_example(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_the_readme_has_both_examples() -> None:
    blocks = python_examples()
    assert len(blocks) == 2 and all(block.startswith("import pandas as pd\nimport recae\n") for block in blocks)


def test_the_dataframe_example_runs_and_its_rmse_is_the_tables(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    planted_ratings().to_csv(tmp_path / "ratings.csv", index=False)
    monkeypatch.chdir(tmp_path)
    done = run_example(python_examples()[1])
    mine, table = done["mine"], done["model"].evaluate()
    assert table.attrs["n_test"] == len(done["test"]) == 600
    rmse = float(np.sqrt(((mine.rating - mine.predicted_rating) ** 2).mean()))
    assert rmse == pytest.approx(table["rmse"].iloc[0], rel=1e-5)


@pytest.mark.slow
def test_the_ml100k_example_runs_and_gives_the_commands_figures(ml100k: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("RECAE_HOME", str(home))
    code = python_examples()[0]
    assert 'store.ingest("ml-100k")' in code
    done = run_example(code.replace('store.ingest("ml-100k")', f'store.ingest("ml-100k", path={str(ml100k)!r})'))
    model = done["model"]
    table = model.evaluate()
    assert table.attrs["split"] == "u1" and table.attrs["n_test"] == 20_000
    assert table["rmse"].iloc[0] < table.set_index("model").loc["svd", "rmse"]  # it beats its baselines

    def command(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--home", str(home), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    shown = pd.read_csv(io.StringIO(command("evaluate", "--format", "csv")))
    numbers = [c for c in table.columns if c not in ("model", "ndcg@10 vs ease")]
    assert table["model"].tolist() == shown["model"].tolist()
    np.testing.assert_allclose(table[numbers].to_numpy(float), shown[numbers].to_numpy(float), atol=6e-5)
    listed = json.loads(command("recommend", "--user", "42", "--format", "json"))
    ours = model.recommend(user=42, n=10)
    assert ours["movie_id"].tolist() == [r["movie_id"] for r in listed]
    assert ours["title"].tolist() == [r["title"] for r in listed] and ours["title"].notna().all()
