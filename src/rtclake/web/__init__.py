"""The web layer: the Starlette application (``app``) and the HTTP helpers every endpoint
shares (``http``)."""
