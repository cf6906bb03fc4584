"""What meets a client connection: the ``[edge]`` limits every HTTP/1.1 listener runs (``edge``), and one
port for every protocol: TLS with ALPN, HTTP/1.1 and HTTP/2, per-stream dispatch by content-type.

client --TLS (ALPN h2 | http/1.1) or cleartext--> dispatch.FrontProtocol
    http/1.1 -> edge.EdgeProtocol (uvicorn's httptools protocol under [edge]) -> the REST app
    h2       -> h2server.H2Server: one HTTP/2 connection, each stream by its content-type
                  application/grpc* -> grpc_relay: the stream's frames to grpc.aio on loopback
                  anything else     -> rest_stream: the REST app over HTTP/2 (ASGI)
"""
