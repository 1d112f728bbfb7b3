"""Persistence of the control plane (SQLModel over SQLite or PostgreSQL).

Callers get domain objects and neutral errors; SQL and its exceptions stay in here.
"""

from controlplane.store.store import Mutation, MutationHook, Store, Tx, WriteTx, check_db_url

__all__ = ["Mutation", "MutationHook", "Store", "Tx", "WriteTx", "check_db_url"]
