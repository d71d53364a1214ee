"""Cache backends: in-process (embedded default) and Redis (shared by replicas)."""
