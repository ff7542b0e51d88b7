"""One catalogue per store: the ``catalogue`` row names what the store's film ids mean, each model version records it.

A store that already holds data gets its row from the releases its succeeded ingests loaded (joined by ``+`` when
an earlier version let two be mixed; NULL when only plain ratings files were loaded), and its existing model
versions are taken to have been trained on it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PLAIN = "ratings-csv"  # recae.store.ingest.PLAIN: a plain ratings file names no catalogue


def upgrade() -> None:
    op.create_table(
        "catalogue",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(64)),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("model_versions", sa.Column("catalogue", sa.String(64), nullable=True))
    conn = op.get_bind()
    has_data = conn.execute(sa.text("SELECT 1 FROM movies UNION ALL SELECT 1 FROM ratings LIMIT 1")).first()
    if has_data is None:
        return
    releases: list[str] = []
    for (dataset,) in conn.execute(sa.text(
            "SELECT dataset FROM ingest_runs WHERE status = 'succeeded' AND dataset <> :plain ORDER BY id"),
            {"plain": PLAIN}):
        if dataset not in releases:
            releases.append(dataset)
    name = "+".join(releases)[:64] or None
    identity = f"{name or 'ratings'}:{uuid.uuid4().hex[:12]}"[:64]
    conn.execute(sa.text("INSERT INTO catalogue (id, name, identity, since) VALUES (1, :name, :identity, :since)"),
                 {"name": name, "identity": identity, "since": datetime.now(timezone.utc)})
    conn.execute(sa.text("UPDATE model_versions SET catalogue = :identity"), {"identity": identity})


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("catalogue")
    op.drop_table("catalogue")
