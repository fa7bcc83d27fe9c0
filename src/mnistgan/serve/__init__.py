"""`mnistgan serve RUN`: a web page and a small JSON/PNG API over one trained generator."""

from .app import MAX_COUNT, create_app, serve

__all__ = ["MAX_COUNT", "create_app", "serve"]
