"""One port for every protocol: TLS with ALPN, HTTP/1.1 and HTTP/2, per-stream dispatch by content-type.

client --TLS (ALPN h2 | http/1.1) or cleartext--> dispatch.FrontProtocol
    http/1.1 -> uvicorn's httptools protocol -> the REST app (unchanged path)
    h2       -> h2server.H2Server: one HTTP/2 connection, each stream by its content-type
                  application/grpc* -> grpc_relay: the stream's frames to grpc.aio on loopback
                  anything else     -> rest_stream: the REST app over HTTP/2 (ASGI)
"""
