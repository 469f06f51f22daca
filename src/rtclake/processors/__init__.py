"""Processors: small steps between a source and the sinks (see :mod:`.base`)."""
