"""Backends: one small protocol (base.py), one file per kind."""

from hsmlb.backends.base import Backend, NodeStats

__all__ = ["Backend", "NodeStats"]
