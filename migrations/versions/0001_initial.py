"""Initial schema: movies, ratings, canonical fold tests, ingest runs, model versions, champion pointer, recommendations.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "movies",
        sa.Column("movie_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("title", sa.String(512)),
        sa.Column("year", sa.Integer()),
        sa.Column("genres", sa.String(512), nullable=False, server_default=""),
    )
    op.create_table(
        "ratings",
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("movie_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("rating", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.BigInteger()),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "fold_tests",
        sa.Column("split", sa.String(16), primary_key=True),
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("movie_id", sa.Integer(), primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_read", sa.BigInteger(), nullable=False),
        sa.Column("rows_loaded", sa.BigInteger(), nullable=False),
        sa.Column("rows_rejected", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_ingest_runs_sha256", "ingest_runs", ["sha256"])
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("orientation", sa.String(8), nullable=False),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "champion",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.String(64), sa.ForeignKey("model_versions.version"), nullable=False),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "recommendations",
        sa.Column("version", sa.String(64), sa.ForeignKey("model_versions.version", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("rank", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for table in ("recommendations", "champion", "model_versions", "ingest_runs", "fold_tests", "ratings", "movies"):
        op.drop_table(table)
