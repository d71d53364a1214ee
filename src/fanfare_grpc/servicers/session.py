"""SessionService: guest sessions, refresh, inspection, revocation, erasure."""

from __future__ import annotations

from typing import Any

from fanfare.session.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from fanfare_grpc import errors
from fanfare_grpc.authentication.consumer_tokens import ConsumerTokenVerifier, TokenVerdict
from fanfare_grpc.domain.access import KeyKind
from fanfare_grpc.domain.consumer_sessions import ConsumerSession
from fanfare_grpc.domain.session_service import IssuedSession, SessionService
from fanfare_grpc.servicers import convert
from fanfare_grpc.servicers.principal import current_principal, device_fingerprint

_REASONS = {
    TokenVerdict.OK: session_pb2.SESSION_VALIDATION_REASON_OK,
    TokenVerdict.EXPIRED: session_pb2.SESSION_VALIDATION_REASON_EXPIRED,
    TokenVerdict.REVOKED: session_pb2.SESSION_VALIDATION_REASON_REVOKED,
    TokenVerdict.INVALID: session_pb2.SESSION_VALIDATION_REASON_INVALID,
    TokenVerdict.DEVICE_MISMATCH: session_pb2.SESSION_VALIDATION_REASON_DEVICE_MISMATCH,
}


def session_message(session: ConsumerSession) -> session_pb2.Session:
    """A session as the API shows it (never the device digest)."""
    return session_pb2.Session(
        session_id=session.session_id,
        consumer_id=session.consumer_id,
        guest=session.guest,
        mode=convert.mode_to_proto(session.mode),
        created_at=convert.timestamp(session.created_at),
        expires_at=convert.timestamp(session.expires_at),
        last_seen_at=convert.timestamp(session.last_seen_at),
        revoked_at=convert.timestamp(session.revoked_at),
    )


def issued_fields(issued: IssuedSession) -> dict[str, Any]:
    """The token-pair fields shared by every response that starts or refreshes a session."""
    return {
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "session": session_message(issued.session),
        "access_token_expires_at": convert.timestamp(issued.access_token_expires_at),
        "refresh_token_expires_at": convert.timestamp(issued.refresh_token_expires_at),
    }


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """Thin: proto in, domain call, proto out."""

    def __init__(self, sessions: SessionService, tokens: ConsumerTokenVerifier) -> None:
        self._sessions = sessions
        self._tokens = tokens

    async def CreateGuestSession(
        self, request: session_service_pb2.CreateGuestSessionRequest, context: Any
    ) -> session_service_pb2.CreateGuestSessionResponse:
        organization_id, mode = current_principal().tenant()
        issued = await self._sessions.create_guest_session(
            organization_id, mode, device_fingerprint()
        )
        return session_service_pb2.CreateGuestSessionResponse(**issued_fields(issued))

    async def RefreshSession(
        self, request: session_service_pb2.RefreshSessionRequest, context: Any
    ) -> session_service_pb2.RefreshSessionResponse:
        organization_id, mode = current_principal().tenant()
        issued = await self._sessions.refresh(
            organization_id, mode, request.refresh_token, device_fingerprint()
        )
        return session_service_pb2.RefreshSessionResponse(**issued_fields(issued))

    async def GetSession(
        self, request: session_service_pb2.GetSessionRequest, context: Any
    ) -> session_service_pb2.GetSessionResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        assert principal.session_id is not None, "authorization requires a consumer token"
        session = await self._sessions.get_session(organization_id, mode, principal.session_id)
        return session_service_pb2.GetSessionResponse(session=session_message(session))

    async def RevokeSession(
        self, request: session_service_pb2.RevokeSessionRequest, context: Any
    ) -> session_service_pb2.RevokeSessionResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        if principal.key_kind is KeyKind.PUBLISHABLE:
            assert principal.session_id is not None, "authorization requires a consumer token"
            revoked = await self._sessions.revoke_session(
                organization_id,
                mode,
                request.session_id or principal.session_id,
                acting_consumer_id=principal.consumer_id,
            )
        else:
            if not request.session_id:
                raise errors.InvalidArgument(
                    "session_id is required with a secret key",
                    (errors.FieldViolation("session_id", "required with a secret key"),),
                )
            revoked = await self._sessions.revoke_session(organization_id, mode, request.session_id)
        return session_service_pb2.RevokeSessionResponse(session=session_message(revoked))

    async def ValidateSession(
        self, request: session_service_pb2.ValidateSessionRequest, context: Any
    ) -> session_service_pb2.ValidateSessionResponse:
        organization_id, mode = current_principal().tenant()
        check = await self._tokens.check(
            request.access_token,
            request.device_fingerprint if request.HasField("device_fingerprint") else None,
            organization_id,
            mode,
        )
        response = session_service_pb2.ValidateSessionResponse(
            valid=check.identity is not None, reason=_REASONS[check.verdict]
        )
        if check.identity is not None:
            response.consumer_id = check.identity.consumer_id
            response.session_id = check.identity.session_id
            response.expires_at.FromDatetime(check.identity.expires_at)
        return response

    async def ListSessions(
        self, request: session_service_pb2.ListSessionsRequest, context: Any
    ) -> session_service_pb2.ListSessionsResponse:
        organization_id, mode = current_principal().tenant()
        sessions, next_page_token = await self._sessions.list_live_sessions(
            organization_id, mode, request.consumer_id, request.page_size, request.page_token
        )
        return session_service_pb2.ListSessionsResponse(
            sessions=[session_message(session) for session in sessions],
            next_page_token=next_page_token,
        )

    async def EraseConsumer(
        self, request: session_service_pb2.EraseConsumerRequest, context: Any
    ) -> session_service_pb2.EraseConsumerResponse:
        organization_id, mode = current_principal().tenant()
        erasure = await self._sessions.erase_consumer(organization_id, mode, request.consumer_id)
        return session_service_pb2.EraseConsumerResponse(
            consumer_id=erasure.consumer.consumer_id,
            erased_at=convert.timestamp(erasure.consumer.erased_at),
            sessions_revoked=len(erasure.revoked_session_ids),
        )
