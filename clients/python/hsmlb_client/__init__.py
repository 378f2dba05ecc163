"""hsmlb-client: call hsmlb from Python with transparent batching.

    import asyncio, hsmlb_client

    async def main():
        async with hsmlb_client.AsyncClient("127.0.0.1:50051") as client:
            reply = await client.encrypt_data(key_identifier="alias/zek-aes128",
                                              plain_text="6BC1BEE22E409F96E93D7E117393172A",
                                              encryption_attributes={"symmetric": {"mode": "ECB"}})
            print(reply.cipher_text)

    asyncio.run(main())

`Client` is the same API for threads and gevent, without `await`. Requests and responses are the
messages of `hsmlb/v1/hsmlb.proto` (shipped in this package, compiled into `hsmlb_client.pb`);
failures raise `HsmlbError` subclasses carrying the gRPC status code.
"""

from hsmlb_client.aio import AsyncClient
from hsmlb_client.errors import (
    Cancelled,
    DeadlineExceeded,
    HsmlbError,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_for,
)
from hsmlb_client.sync import Client
from hsmlb_client.v1 import hsmlb_pb2 as pb
from hsmlb_client.v1 import hsmlb_pb2_grpc as pb_grpc

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "HsmlbError",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for",
    "pb",
    "pb_grpc",
]
__version__ = "0.1.0"
