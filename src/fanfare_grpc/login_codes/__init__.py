"""Delivery of one-time login codes (passwordless email login)."""
