"""Server processes the bench starts: the raw gRPC baseline and the echo tool server."""
