"""The interceptor chain, assembled in one place. First listed is outermost.

Order (ARCHITECTURE.md): 1 request context, 2 audit capture, 3 pre-auth IP rate
limit, 4 authentication, 5 principal rate limit, 6 authorization, 7 request
validation, then idempotency and the servicer. Slots 2, 3 and 5 are filled by the
issues that build them; slot 3 holds, for now, the cap on open streams of the
methods that need no credential. Outside them all, the stream writer (transport only) closes
every streaming call's layers in the call's own task however the call ends.
"""

from __future__ import annotations

from grpc import aio

from fanfare_grpc.app import Application
from fanfare_grpc.interceptors.authentication import AuthenticationInterceptor
from fanfare_grpc.interceptors.authorization import AuthorizationInterceptor
from fanfare_grpc.interceptors.idempotency import IdempotencyInterceptor
from fanfare_grpc.interceptors.public_streams import PublicStreamCapInterceptor
from fanfare_grpc.interceptors.request_context import RequestContextInterceptor
from fanfare_grpc.interceptors.response_headers import ResponseHeadersInterceptor
from fanfare_grpc.interceptors.stream_writer import StreamWriterInterceptor
from fanfare_grpc.interceptors.validation import RequestValidationInterceptor


def build_interceptor_chain(application: Application) -> list[aio.ServerInterceptor]:
    """All server interceptors, outermost first."""
    return [
        StreamWriterInterceptor(),
        RequestContextInterceptor(application.logger, application.outages),
        # Before authentication: the methods it caps need no credential.
        PublicStreamCapInterceptor(
            application.permissions,
            application.settings.public_streams_per_client,
            application.envelope.deployment_ip_digester().digest,
        ),
        AuthenticationInterceptor(
            application.permissions,
            application.key_verifier,
            application.key_usage,
            frozenset(application.settings.platform_principals),
            application.clock,
            application.envelope.deployment_ip_digester(),
            application.consumer_tokens,
        ),
        AuthorizationInterceptor(application.permissions),
        RequestValidationInterceptor(application.validator),
        # Sends the initial metadata the layers above collected, before any work
        # (and before an idempotent replay, which never reaches the servicer).
        ResponseHeadersInterceptor(),
        IdempotencyInterceptor(
            application.permissions,
            application.cache.values,
            application.envelope,
            application.idempotency_claims,
            application.logger,
            application.clock,
        ),
    ]
