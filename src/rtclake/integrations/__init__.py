"""Vendor integrations. Each registers its tables, components and routes through the
entry point group ``rtclake.integrations`` (see :mod:`rtclake.registry`); nothing outside
this package imports them."""
