"""Business rules. Nothing here imports grpc."""
