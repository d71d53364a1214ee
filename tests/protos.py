"""The generated service modules, for tests that walk every RPC of the protos."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from fanfare.audit.v1 import audit_service_pb2
from fanfare.auth.v1 import auth_service_pb2
from fanfare.queue.v1 import queue_service_pb2
from fanfare.session.v1 import session_service_pb2
from fanfare.webhook.v1 import webhook_service_pb2
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

# The five Fanfare services.
FANFARE_SERVICE_MODULES: tuple[ModuleType, ...] = (
    auth_service_pb2,
    session_service_pb2,
    queue_service_pb2,
    webhook_service_pb2,
    audit_service_pb2,
)
# Everything the server answers: the five, health and reflection.
SERVED_MODULES: tuple[ModuleType, ...] = (*FANFARE_SERVICE_MODULES, health_pb2, reflection_pb2)


def all_methods(modules: Sequence[ModuleType] = FANFARE_SERVICE_MODULES) -> list[MethodDescriptor]:
    """Every RPC of the services the modules define, in declaration order."""
    return [
        method
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def full_method_name(method: MethodDescriptor) -> str:
    """``/package.Service/Method``, as gRPC names it on the wire."""
    return f"/{method.containing_service.full_name}/{method.name}"
