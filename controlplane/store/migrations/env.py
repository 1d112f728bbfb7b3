"""Alembic environment: runs on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from controlplane.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations with `modelplane controlplane db upgrade|downgrade|stamp` "
        "(controlplane.store.migrate), not the alembic command"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
