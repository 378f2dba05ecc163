"""gRPC servicers: decode and validate, hand one Operation to the router, encode the result."""
