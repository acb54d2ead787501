"""The generated gradalign.v1 messages and stubs, for tools that speak raw gRPC.

``pb`` holds the messages (``pb.BuildTreeRequest`` ...), ``pb_grpc`` the stub and servicer base
(``pb_grpc.GradAlignStub(channel)``). Most callers want :class:`gradalign_client.Client` instead; the
wire contract itself is ``protos/gradalign/v1/gradalign.proto``.
"""

from ._proto.gradalign.v1 import gradalign_pb2 as pb
from ._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
