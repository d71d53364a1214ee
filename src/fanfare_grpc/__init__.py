"""Fanfare gRPC: consumer sessions, fair queues, handoff tokens, webhooks and audit."""

__version__ = "0.1.0"
