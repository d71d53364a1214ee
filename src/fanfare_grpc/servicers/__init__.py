"""Thin servicers: proto ↔ domain conversion only. Registration lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fanfare.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from fanfare.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from fanfare.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from fanfare.session.v1 import session_service_pb2, session_service_pb2_grpc
from fanfare.webhook.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from grpc import aio

from fanfare_grpc.app import Application
from fanfare_grpc.servicers.auth import AuthServicer
from fanfare_grpc.servicers.queue import QueueServicer
from fanfare_grpc.servicers.session import SessionServicer

# Full names of the five product services, from the generated descriptors.
SERVICE_NAMES: tuple[str, ...] = (
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


# (registration function, servicer factory) per service. Each factory is the
# generated base class until the issue that builds the service replaces it.
_SERVICERS: tuple[tuple[Callable[[Any, aio.Server], None], Callable[[], Any]], ...] = (
    (
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
        auth_service_pb2_grpc.AuthServiceServicer,
    ),
    (
        session_service_pb2_grpc.add_SessionServiceServicer_to_server,
        session_service_pb2_grpc.SessionServiceServicer,
    ),
    (
        queue_service_pb2_grpc.add_QueueServiceServicer_to_server,
        queue_service_pb2_grpc.QueueServiceServicer,
    ),
    (
        webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server,
        webhook_service_pb2_grpc.WebhookServiceServicer,
    ),
    (
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server,
        audit_service_pb2_grpc.AuditServiceServicer,
    ),
)


def register_servicers(server: aio.Server, application: Application) -> tuple[str, ...]:
    """Add the five services; RPCs not built yet answer UNIMPLEMENTED.

    The generated base classes answer every RPC with UNIMPLEMENTED until an issue
    replaces them with an implementation.
    """
    # mypy-protobuf types every RPC as abstract; the ones an issue has not built yet
    # are inherited from the generated base and answer UNIMPLEMENTED.
    implemented: dict[Callable[[Any, aio.Server], None], Any] = {
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server: AuthServicer(
            application.key_service,
            application.organizations,
            application.envelope,
            application.clock,
            application.signing_keys,
            application.settings.token_issuer,
            application.passwordless,
        ),
        session_service_pb2_grpc.add_SessionServiceServicer_to_server: SessionServicer(
            application.sessions, application.consumer_tokens
        ),
        queue_service_pb2_grpc.add_QueueServiceServicer_to_server: QueueServicer(
            application.queue_config, application.queue_entries, application.position_feed
        ),
    }
    for add_to_server, servicer in _SERVICERS:
        add_to_server(implemented.get(add_to_server) or servicer(), server)
    return SERVICE_NAMES
