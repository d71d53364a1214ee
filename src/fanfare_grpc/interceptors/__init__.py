"""Server interceptors: one cross-cutting concern per module, assembled in ``chain``."""
