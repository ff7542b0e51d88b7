"""Precomputed lists are ordered by a ranker: each row keeps the ranking score and the predicted rating apart.

Rows written before this revision hold the predicted rating in ``score`` (the lists were ordered by it) and NULL
in ``predicted_rating``; readers take ``coalesce(predicted_rating, score)``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("recommendations", sa.Column("predicted_rating", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recommendations") as batch:
        batch.drop_column("predicted_rating")
