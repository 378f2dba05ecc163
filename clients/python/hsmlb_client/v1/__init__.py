"""Generated hsmlb.v1 stubs (hsmlb_pb2, hsmlb_pb2_grpc), compiled from the shipped .proto at build time."""
