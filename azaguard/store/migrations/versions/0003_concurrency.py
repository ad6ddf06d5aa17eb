"""concurrency: login throttle counters, resumable import batches, assessment revisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 09:00:00

- login_throttle: failed-login counters per username, client address and username at an
  address, updated atomically before a password is checked (auth.py), plus the addresses a
  username last logged in from.
- import_batches: `state` (running | done), `digest` (identity of the input) and `items_done`
  / `items_total` (how far a chunked import got), so an interrupted import resumes where it
  stopped. Batches written before this revision were single transactions: they are done.
- assessments: `revision`, bumped by every refresh and review, so a refresh computed without
  the write lock is only written if nobody changed the row meanwhile; `result_digest`, so a
  refresh that changes nothing writes nothing (existing rows have none: their next refresh writes).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("last_lockout", sa.DateTime(), nullable=True),
        sa.Column("last_success", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("import_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=16), server_default="done", nullable=False))
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("items_done", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("items_total", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_import_batches_digest"), ["digest"], unique=False)
    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("result_digest", sa.String(length=40), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.drop_column("result_digest")
        batch_op.drop_column("revision")
    with op.batch_alter_table("import_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_import_batches_digest"))
        batch_op.drop_column("items_total")
        batch_op.drop_column("items_done")
        batch_op.drop_column("digest")
        batch_op.drop_column("state")
    op.drop_table("login_throttle")
