import services  # noqa: F401  (sets gRPC's process environment before gRPC loads)
