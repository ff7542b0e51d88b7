"""Nightly retraining: one row per ``recae retrain`` run (ingested files, metrics, decision, duration).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16)),
        sa.Column("champion_before", sa.String(64)),
        sa.Column("challenger", sa.String(64)),
        sa.Column("champion_after", sa.String(64)),
        sa.Column("data_fingerprint", sa.String(64)),
        sa.Column("files_ingested", sa.Integer(), nullable=False),
        sa.Column("files_rejected", sa.Integer(), nullable=False),
        sa.Column("rows_loaded", sa.BigInteger(), nullable=False),
        sa.Column("champion_rmse", sa.Float()),
        sa.Column("challenger_rmse", sa.Float()),
        sa.Column("seconds", sa.Float()),
        sa.Column("message", sa.Text()),
        sa.Column("summary", sa.Text(), nullable=False),
    )
    op.create_index("ix_retrain_runs_started_at", "retrain_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_retrain_runs_started_at", table_name="retrain_runs")
    op.drop_table("retrain_runs")
