"""Bare gRPC servers that answer ModelInfer with a fixed-size payload: the transport floor.

They register the OIP method path with a generic handler (no stubs, no parsing) and answer
every request with the bytes of ``--response`` (a serialized ``ModelInferResponse`` of the
model's output size), so the wire carries the same sizes as a real OIP exchange and the client
parses the same answer, while the server does no work.

    python -m sidecar_tools.echo_server --kind threads|aio --listen 127.0.0.1:PORT \
        --response FILE [--workers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from sidecar_tools.oip import SERVICE

_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.so_reuseport", 0),
]


def _serve_threads(listen: str, payload: bytes, workers: int) -> None:
    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        return payload

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(0.5).wait()


async def _serve_aio(listen: str, payload: bytes) -> None:
    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("threads", "aio"), required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--response", required=True, help="file with the bytes to answer")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    payload = Path(args.response).read_bytes()
    if args.kind == "threads":
        _serve_threads(args.listen, payload, args.workers)
    else:
        asyncio.run(_serve_aio(args.listen, payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
