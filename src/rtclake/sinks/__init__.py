"""Sinks: where batches of records go after the spool."""

from rtclake.sinks.base import Batch, Sink
from rtclake.sinks.lake import LakeSink

__all__ = ["Batch", "LakeSink", "Sink"]
