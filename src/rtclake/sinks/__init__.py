"""Sinks: where batches of records go after the spool (the contract: :mod:`.base`; the
Parquet lake: :mod:`rtclake.lake.sink`)."""

from rtclake.sinks.base import Batch, Rejected, Sink

__all__ = ["Batch", "Rejected", "Sink"]
