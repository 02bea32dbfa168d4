"""passages for lexical search (PostgreSQL tsvector + GIN, SQLite FTS5), retrieval settings

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# External content: the FTS5 table stores only its index, the text stays in `passages`; the
# triggers keep both in step (cascaded deletes fire them too). The chatbot's id (32 hex
# characters on SQLite: one token) is indexed too, so a search matches inside one chatbot.
# unicode61 with diacritics removed matches "Munchen" and "München" alike, in any language.
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE passages_fts USING fts5(text, chatbot_id, content='passages', "
    "content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER passages_fts_insert AFTER INSERT ON passages BEGIN "
    "INSERT INTO passages_fts(rowid, text, chatbot_id) "
    "VALUES (new.id, new.text, new.chatbot_id); END",
    "CREATE TRIGGER passages_fts_delete AFTER DELETE ON passages BEGIN "
    "INSERT INTO passages_fts(passages_fts, rowid, text, chatbot_id) "
    "VALUES ('delete', old.id, old.text, old.chatbot_id); END",
    "CREATE TRIGGER passages_fts_update AFTER UPDATE OF text, chatbot_id ON passages BEGIN "
    "INSERT INTO passages_fts(passages_fts, rowid, text, chatbot_id) "
    "VALUES ('delete', old.id, old.text, old.chatbot_id); "
    "INSERT INTO passages_fts(rowid, text, chatbot_id) "
    "VALUES (new.id, new.text, new.chatbot_id); END",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "passages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("chatbot_id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "tsv", sa.Text().with_variant(postgresql.TSVECTOR(), "postgresql"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["chatbot_id"],
            ["chatbots.id"],
            name=op.f("fk_passages_chatbot_id_chatbots"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_passages_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passages")),
    )
    with op.batch_alter_table("passages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_passages_chatbot_id"), ["chatbot_id"], unique=False)
        batch_op.create_index(
            "ix_passages_document_id_chunk_index", ["document_id", "chunk_index"], unique=False
        )
    if sqlite:
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        op.create_index("ix_passages_tsv", "passages", ["tsv"], postgresql_using="gin")

    with op.batch_alter_table("chatbots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retrieval_mode", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("language", sa.String(length=32), nullable=True))


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("chatbots", schema=None) as batch_op:
        batch_op.drop_column("language")
        batch_op.drop_column("retrieval_mode")
    if sqlite:
        for name in ("passages_fts_update", "passages_fts_delete", "passages_fts_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS passages_fts")
    else:
        op.drop_index("ix_passages_tsv", table_name="passages", postgresql_using="gin")
    with op.batch_alter_table("passages", schema=None) as batch_op:
        batch_op.drop_index("ix_passages_document_id_chunk_index")
        batch_op.drop_index(batch_op.f("ix_passages_chatbot_id"))
    op.drop_table("passages")
