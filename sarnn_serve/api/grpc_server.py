"""The gRPC server (grpc.aio) beside uvicorn: same process, same event loop, same data plane;
started and stopped by the app's lifespan when SARNN_GRPC_ENABLED (the default)."""

import asyncio
import logging

import grpc

from sarnn_serve.api import grpc_predict_v2_pb2_grpc as pb_grpc
from sarnn_serve.api.grpc_service import InferenceService
from sarnn_serve.repository import ModelRepository
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings

log = logging.getLogger("sarnn.grpc")
STOP_GRACE_S = 5.0


class GrpcServer:
    """A started gRPC server; `port` is the port it listens on."""

    def __init__(self, server: grpc.aio.Server, service: InferenceService, port: int) -> None:
        self.server, self.service, self.port = server, service, port

    async def stop(self) -> None:
        """Refuse new calls, give running ones STOP_GRACE_S to finish, then cancel them; wait as
        long for stream requests still in flight."""
        await self.server.stop(STOP_GRACE_S)
        if self.service.running:
            await asyncio.wait(list(self.service.running), timeout=STOP_GRACE_S)


async def start(
    settings: Settings, plane: DataPlane, repository: ModelRepository, name: str, version: str
) -> GrpcServer:
    """Serve `inference.GRPCInferenceService` on settings.host:settings.grpc_port (TLS when a
    certificate is set); OSError if the address cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # several workers share the port; one server alone must not share it unknowingly
            ("grpc.so_reuseport", int(settings.workers > 1)),
        ]
    )
    service = InferenceService(plane, repository, name, version)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    tls = settings.grpc_tls_cert_file is not None and settings.grpc_tls_key_file is not None
    try:
        if tls:
            key = settings.grpc_tls_key_file.read_bytes()
            chain = settings.grpc_tls_cert_file.read_bytes()
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(
            f"gRPC cannot listen on {address}: in use, or not an address of this host "
            f"(set SARNN_GRPC_PORT, or SARNN_GRPC_ENABLED=false; {exc})"
        ) from None
    await server.start()
    log.info("grpc listening", extra={"address": f"{host}:{port}", "tls": tls})
    return GrpcServer(server, service, port)
