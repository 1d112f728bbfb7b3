"""The Modelplane control plane: registry, evaluation, governance and rollout state over gRPC.

Layers: ``api`` (thin gRPC servicers and proto converters), ``services`` (domain logic),
``store`` (SQLModel tables, migrations; returns domain objects), ``domain`` (plain dataclasses).
"""
