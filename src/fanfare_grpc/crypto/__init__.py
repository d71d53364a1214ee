"""Envelope encryption, keyed digests and secret generation. No grpc, no SQL."""
