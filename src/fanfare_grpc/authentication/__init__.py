"""Turning presented credentials into a ``Principal`` (no grpc here)."""
