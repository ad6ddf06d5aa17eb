"""worklist: who owns a patient (claim / assign) and the most urgent finding in words on the stored assessment

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 05:00:00

- patients: `owner_id`, the team member who claimed the patient or was assigned it (a user id;
  null: nobody). A plain indexed column, not a foreign key: adding a constraint to `patients` on
  SQLite means rebuilding the table, which with foreign keys on would cascade to every child row;
  users are deactivated, never deleted, and the worklist reads the owner through an outer join.
- assessments: the most urgent open finding, so the worklist shows what is wrong without opening
  the patient or assessing again: `urgent_code`, `urgent_message` (the engine's words without the
  "(3 days ago)" that is only true on the day of the assessment), `urgent_value` (the newest result
  it rests on, with its unit) and `urgent_date` (the finding's date). `urgent_code` is null on rows
  written before this revision ("" means no open finding), so a refresh always writes them; and
  they are marked stale (`as_of` in the past) so the next refresh (`azaguard refresh`, the server's
  background re-assessment, or opening the patient) fills them in.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STALE = dt.date(2000, 1, 1)


def upgrade() -> None:
    # Plain ALTERs on `patients`, never a batch rebuild (see above): SQLite adds and drops a column in place.
    op.add_column("patients", sa.Column("owner_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_patients_owner_id"), "patients", ["owner_id"], unique=False)
    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("urgent_code", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("urgent_message", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("urgent_value", sa.String(length=120), server_default="", nullable=False))
        batch_op.add_column(sa.Column("urgent_date", sa.Date(), nullable=True))
    # Assessments stored before this revision do not say what is most urgent: re-assess them.
    assessments = sa.table("assessments", sa.column("as_of", sa.Date()))
    op.execute(assessments.update().values(as_of=_STALE))


def downgrade() -> None:
    with op.batch_alter_table("assessments", schema=None) as batch_op:
        batch_op.drop_column("urgent_date")
        batch_op.drop_column("urgent_value")
        batch_op.drop_column("urgent_message")
        batch_op.drop_column("urgent_code")
    op.drop_index(op.f("ix_patients_owner_id"), table_name="patients")
    op.drop_column("patients", "owner_id")
