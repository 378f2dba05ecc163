"""Generated gRPC stubs for the hsmlb.v1 API (compiled from proto/ at build time)."""
