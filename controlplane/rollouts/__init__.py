"""Rollouts of candidate versions: the state machine, guard rules over merged window reports,
drift responses with retraining hooks, the reconciler that moves rollouts as time passes, and
the notifier that tells watching sidecars of every change.

Modules: :mod:`~controlplane.rollouts.spec` (requested settings and defaults),
:mod:`~controlplane.rollouts.machine` (states and phases), :mod:`~controlplane.rollouts.guards`
(CEL guards and their defaults), :mod:`~controlplane.rollouts.histograms` and
:mod:`~controlplane.rollouts.merge` (merging replicas' windows, derived fields),
:mod:`~controlplane.rollouts.drift` (PSI against baselines), :mod:`~controlplane.rollouts.hooks`
(webhooks and commands), :mod:`~controlplane.rollouts.transitions` (persisting a transition),
:mod:`~controlplane.rollouts.service` and :mod:`~controlplane.rollouts.reports` (the domain
services), :mod:`~controlplane.rollouts.reconciler` and :mod:`~controlplane.rollouts.notifier`.
"""
