"""The interceptor chain, assembled in one place. First listed is outermost.

Order (ARCHITECTURE.md): 1 request context, 2 audit capture, 3 pre-auth IP rate
limit, 4 authentication, 5 principal rate limit, 6 authorization, 7 request
validation, then the servicer. Slots 2-6 are filled by the issues that build them.
"""

from __future__ import annotations

import logging

import protovalidate
from grpc import aio

from fanfare_grpc.interceptors.request_context import RequestContextInterceptor
from fanfare_grpc.interceptors.response_headers import ResponseHeadersInterceptor
from fanfare_grpc.interceptors.validation import RequestValidationInterceptor


def build_interceptor_chain(
    logger: logging.Logger, validator: protovalidate.Validator
) -> list[aio.ServerInterceptor]:
    """All server interceptors, outermost first."""
    return [
        RequestContextInterceptor(logger),
        # 2 audit capture, 3 IP rate limit, 4 authentication, 5 principal rate
        # limit, 6 authorization: added by the issues that build them.
        RequestValidationInterceptor(validator),
        # Always last: sends the initial metadata the layers above collected.
        ResponseHeadersInterceptor(),
    ]
