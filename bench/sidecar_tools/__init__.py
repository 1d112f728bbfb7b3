"""Helpers of the sidecar benchmark: OIP messages, load generator, echo servers, launchers.

Run ``bench/sidecar.py``; the modules here are started by it as separate processes.
"""
