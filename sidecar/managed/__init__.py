"""Managed mode: the sidecar serves what a deployment's desired state names.

``modelplane sidecar serve --control-plane ADDR --deployment NAME`` (or
``sidecar.server.start(settings)`` with ``settings.control_plane`` set) watches the deployment
(:mod:`~sidecar.managed.watch`), downloads and verifies artifacts
(:mod:`~sidecar.managed.artifacts`), loads versions and switches the routing table atomically
(:mod:`~sidecar.managed.versions`, :mod:`~sidecar.managed.manager`), routes requests by a sticky
key (:mod:`~sidecar.managed.router`), runs shadow copies off the response path
(:mod:`~sidecar.managed.shadow`), counts per-arm evidence in the observer thread
(:mod:`~sidecar.managed.compare`, :mod:`~sidecar.managed.window`,
:mod:`~sidecar.managed.observer`), reports windows (:mod:`~sidecar.managed.reporter`) and joins
ground-truth labels (:mod:`~sidecar.managed.labels`).
"""

from sidecar.managed.server import ManagedHandle, start_managed

__all__ = ["ManagedHandle", "start_managed"]
