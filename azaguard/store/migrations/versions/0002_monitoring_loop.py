"""monitoring loop: azathioprine holds, follow-up dismissals, awaiting marks on the worklist

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00

- medications: `reason` (why a medicine is on hold or stopped) and `status_date` (when that took
  effect); `status` may now be "on-hold".
- follow_up_dismissals: a repeat test a clinician dropped, with the reason (one per patient and
  follow-up key).
- assessments: `awaiting` (space-padded test groups with an open follow-up, like `categories`)
  and `treatment` (the assessment's treatment state), both read by the worklist query.

Stored assessments written before this revision have neither column filled in, so they are
marked stale (`as_of` in the past): the next refresh (`azaguard refresh`, the server's background
re-assessment, or opening the patient) re-assesses them.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STALE = dt.date(2000, 1, 1)


def upgrade() -> None:
    with op.batch_alter_table("medications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("status_date", sa.Date(), nullable=True))

    # A vaccine code that may be live (CVX 188, zoster of unspecified formulation) must survive storage.
    with op.batch_alter_table("immunizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("live_unknown", sa.Boolean(), server_default=sa.false(), nullable=False))

    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("awaiting", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("treatment", sa.String(length=16), server_default="", nullable=False))

    op.create_table(
        "follow_up_dismissals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "key", name="uq_follow_up_dismissal"),
    )

    # Assessments stored before this revision carry no awaiting marks or treatment state: re-assess them.
    assessments = sa.table("assessments", sa.column("as_of", sa.Date()))
    op.execute(assessments.update().values(as_of=_STALE))


def downgrade() -> None:
    op.drop_table("follow_up_dismissals")
    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.drop_column("treatment")
        batch_op.drop_column("awaiting")
    with op.batch_alter_table("immunizations", schema=None) as batch_op:
        batch_op.drop_column("live_unknown")
    with op.batch_alter_table("medications", schema=None) as batch_op:
        batch_op.drop_column("status_date")
        batch_op.drop_column("reason")
