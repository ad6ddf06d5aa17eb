"""documents: letters to the GP or specialist (PDF), with date and author

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 05:00:00

- documents: one row per document made for a patient (a shared-care letter to the GP or the
  specialist team, service.make_letter): kind (gp-letter | specialist-letter), recipient
  (gp | specialist), title, when it was made, its author (users.id, and the username, kept if the
  user row goes), the knowledge version of the assessment it was made from, the media type, the
  bytes as they were sent (the PDF) and their SHA-256. Deleting a patient deletes their documents.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("recipient", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(length=80), nullable=False),
        sa.Column("knowledge_version", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=40), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_documents_patient_created", "documents", ["patient_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_documents_patient_created", table_name="documents")
    op.drop_table("documents")
