"""How a ``train --tune`` search reads on the terminal: one summary line, or tables of its trials.

Shared by ``recae train`` (after tuning) and ``recae models show`` (the search kept with a version).
"""

from __future__ import annotations

from typing import Any


def tune_summary(record: dict[str, Any]) -> str:
    """One line on a --tune search: trials, time, why it stopped, and the chosen setting."""
    chosen = {k: v for k, v in record.get("chosen", {}).items() if k not in ("trial", "val_rmse")}
    settings = ", ".join(f"{k} {v}" for k, v in chosen.items())
    return (f"{len(record.get('trials', []))} trials in {record.get('search_seconds')} s of a "
            f"{record.get('budget_s')} s budget ({record.get('stopped')}); chose trial "
            f"{record.get('chosen', {}).get('trial')} (validation RMSE {record.get('chosen', {}).get('val_rmse')}): "
            f"{settings}")


def tune_tables(record: dict[str, Any]) -> str:
    """The --tune search as tables: every trial (settings, validation RMSE, seconds), then the ranker's lambdas."""
    from recae.cli.output import render

    trials = [{k: (" x ".join(map(str, v)) if isinstance(v, list) else v) for k, v in trial.items()}
              for trial in record.get("trials", [])]
    ranker = [{"input": search["input"], "lambda": t["lambda"], "ndcg@10": t["ndcg@10"]}
              for search in record.get("ranker_trials", []) for t in search.get("trials", [])]
    parts = [render(trials, "table", title=f"Tuning trials (members: {record.get('members')})")]
    if ranker:
        parts.append(render(ranker, "table", title="Ranker trials (EASE lambda, NDCG@10 on its carve)"))
    return "\n".join(parts)
