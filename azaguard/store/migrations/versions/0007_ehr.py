"""ehr: CDS Hooks clients, seen JWT ids, issued cards and their feedback; SMART identities and launches

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 07:40:00

- cds_clients: EHRs allowed to call /cds-services (issuer, pinned JWKS or JWKS URL, allowed jku
  URLs, FHIR servers azaguard may call for them).
- cds_jti: JWT ids until they expire (primary key: a replay is refused by the database).
- cds_cards / cds_feedback: cards returned, and what the clinician did with them.
- smart_identities: an EHR's fhirUser (per issuer) -> an azaguard user.
- smart_launches: OAuth state, PKCE verifier and nonce of a launch in progress.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cds_clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("iss", sa.String(length=400), nullable=False),
        sa.Column("jwks", JSONType, nullable=True),
        sa.Column("jwks_url", sa.String(length=400), nullable=True),
        sa.Column("jku_allow", JSONType, nullable=False),
        sa.Column("fhir_servers", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("iss"),
    )
    op.create_table(
        "cds_jti",
        sa.Column("jti", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_cds_jti_expires_at", "cds_jti", ["expires_at"])
    op.create_table(
        "cds_cards",
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("code", sa.String(length=80), nullable=False),
        sa.Column("indicator", sa.String(length=12), nullable=False),
        sa.Column("summary", sa.String(length=200), nullable=False),
        sa.Column("client_iss", sa.String(length=400), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_index("ix_cds_cards_patient_id", "cds_cards", ["patient_id"])
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("outcome_at", sa.DateTime(), nullable=False),
        sa.Column("reason_code", sa.String(length=80), nullable=False),
        sa.Column("reason_system", sa.String(length=400), nullable=False),
        sa.Column("reason_display", sa.String(length=400), nullable=False),
        sa.Column("comment", sa.String(length=2000), nullable=False),
        sa.Column("accepted_suggestions", JSONType, nullable=False),
        sa.Column("client_iss", sa.String(length=400), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("card_uuid", "outcome_at", "outcome", name="uq_cds_feedback_once"),
    )
    op.create_index("ix_cds_feedback_card_uuid", "cds_feedback", ["card_uuid"])
    op.create_index("ix_cds_feedback_patient_id", "cds_feedback", ["patient_id"])
    op.create_table(
        "smart_identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("iss", sa.String(length=400), nullable=False),
        sa.Column("fhir_user", sa.String(length=400), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("iss", "fhir_user", name="uq_smart_identity"),
    )
    op.create_index("ix_smart_identities_user_id", "smart_identities", ["user_id"])
    op.create_table(
        "smart_launches",
        sa.Column("state", sa.String(length=100), nullable=False),
        sa.Column("iss", sa.String(length=400), nullable=False),
        sa.Column("data", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("state"),
    )
    op.create_index("ix_smart_launches_created_at", "smart_launches", ["created_at"])


def downgrade() -> None:
    op.drop_table("smart_launches")
    op.drop_table("smart_identities")
    op.drop_table("cds_feedback")
    op.drop_table("cds_cards")
    op.drop_table("cds_jti")
    op.drop_table("cds_clients")
