"""Benchmarks of Fanfare gRPC: a reusable harness (``bench.harness``) and its cases.

Run ``python -m bench.run`` from the repository root; see ``bench/README.md``.
"""
