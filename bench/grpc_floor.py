"""The floor under regiongate's gRPC path: a bare grpc.aio server that answers ``xai_api.Chat/GetCompletion``
with the message regiongate returns for the benchmark's unary call, and does nothing else.

    .venv/bin/python -m bench.grpc_floor --port 50051 [--front]

Per call it reads the metadata and the peer, sends initial metadata of the same shape as regiongate's
(region, route, request id, a receipt-sized value) and returns the prebuilt response: what any grpc.aio
gateway pays before doing any work of its own. ``--front`` puts regiongate's gRPC front (the byte pipe that
reads ``:authority``, ``regiongate/grpc/front.py``) before it, as ``regiongate serve --grpc-port`` does, so
that the pipe's cost is the difference of the two. ``bench.instructions --paths grpc-floor,grpc-floor-front``
counts both under callgrind beside the gateway's ``grpc`` path.
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import uvloop
from xai_sdk.proto import chat_pb2

from bench.upstream import CREATED
from regiongate.grpc.front import Connections, GrpcFront
from regiongate.grpc.translate import completion_response

INITIAL = (
    ("x-regiongate-region", "us-east-1"),
    ("x-regiongate-route", "http"),
    ("x-request-id", "req_0123456789abcdef0123"),
    ("x-regiongate-receipt", "r" * 320),  # a signed receipt is about this long
)


def response(tokens: int = 16) -> bytes:
    """What regiongate answers the benchmark's unary call with (bench.upstream's completion, translated)."""
    obj = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": "bench-0ms",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(["token"] * tokens)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens},
    }
    return bytes(completion_response(obj, "bench-0ms").SerializeToString())


async def serve(port: int, front: bool) -> None:
    answer = response()

    async def get_completion(request: chat_pb2.GetCompletionsRequest, context: Any) -> bytes:
        context.invocation_metadata()
        context.peer()
        await context.send_initial_metadata(INITIAL)
        return answer

    handler = grpc.unary_unary_rpc_method_handler(
        get_completion,
        request_deserializer=chat_pb2.GetCompletionsRequest.FromString,
        response_serializer=lambda b: b,  # already serialized
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("xai_api.Chat", {"GetCompletion": handler}),)
    )
    inner = server.add_insecure_port(f"127.0.0.1:{0 if front else port}")
    await server.start()
    if front:
        await GrpcFront(Connections(), inner, tls=False).start("127.0.0.1", port)
    print(f"grpc floor on 127.0.0.1:{port}" + (" (through the front)" if front else ""), flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--front", action="store_true", help="behind regiongate's gRPC front (the byte pipe)")
    a = p.parse_args()
    uvloop.run(serve(a.port, a.front))


if __name__ == "__main__":
    main()
