"""The xAI-compatible gRPC front door: a byte front that learns the dialled host (``front``), the services
over the shared gateway (``servicer``), message translation (``translate``) and status mapping (``status``).
``server.start_grpc`` wires them up."""
