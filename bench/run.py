"""Run the registered benchmark cases and print the table (or JSON).

``python -m bench.run`` (or ``.venv/bin/python bench/run.py``) from the repository
root; ``--help`` lists the options. New cases go into one of the ``*_cases``
functions below (see ``bench.harness`` for the ``Case`` API).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.echo import CONSUMER_ECHO_METHOD, ECHO_METHOD
from bench.harness import (
    BASELINE,
    HEALTH_CHECK_METHOD,
    SUT,
    BenchContext,
    CallSpec,
    Case,
    RunOptions,
    SutOptions,
    bare_health_check_case,
    run_cases,
)
from bench.queues import GROUPS, queue_cases
from bench.report import environment, table, to_json
from bench.servers import ServerStartError
from bench.sessions import (
    REFRESH_SESSION,
    RefreshChain,
    consumer_metadata,
    create_guest_session,
    new_device,
)

# Set by the harness itself: the SUT listens on 127.0.0.1:0 with a fresh data dir.
_HARNESS_OWNED_ENV = frozenset({"FANFARE_LISTEN", "FANFARE_DATA_DIR"})
# Set by --redis (with a fresh prefix that is cleaned up).
_REDIS_ENV = frozenset({"FANFARE_REDIS_URL", "FANFARE_REDIS_PREFIX"})


BARE_ECHO = "bare_echo"
ECHO_PAYLOAD = b"x" * 64


def baseline_cases() -> list[Case]:
    """Cases on the bare grpc.aio server; the references of the ratios."""
    return [
        bare_health_check_case(),
        Case(
            name=BARE_ECHO,
            target=BASELINE,
            build=lambda ctx: CallSpec(ECHO_METHOD, request=ECHO_PAYLOAD),
            description="64-byte echo on the bare server (no interceptors)",
            reference=None,
        ),
    ]


def interceptor_cases() -> list[Case]:
    """Unauthenticated calls through the SUT's full interceptor chain."""
    return [
        Case(
            name="health_check",
            target=SUT,
            build=lambda ctx: CallSpec(HEALTH_CHECK_METHOD),
            description="Health/Check on the SUT: full interceptor chain, no auth",
        )
    ]


AUTHENTICATED_CALL = "authenticated_call"
LIST_API_KEYS = "/fanfare.auth.v1.AuthService/ListApiKeys"
COLD_KEYS = 24


def _bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


def _fresh_admin_keys(ctx: BenchContext, count: int) -> list[str]:
    """``count`` new ADMIN keys, created through the SUT's API (never used before)."""
    from fanfare.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
    from fanfare.common.v1 import common_pb2

    admin = ctx.organization()["secret_key"]
    request = auth_service_pb2.CreateApiKeyRequest(
        kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_ADMIN, name="bench cold key"
    )
    with grpc.insecure_channel(ctx.sut_address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        return [
            stub.CreateApiKey(request, metadata=_bearer(admin), timeout=30).secret
            for _ in range(count)
        ]


def auth_cases() -> list[Case]:
    """Authenticated calls: warm key cache, the cold (bcrypt) path, and a real RPC."""
    return [
        Case(
            name=AUTHENTICATED_CALL,
            target=SUT,
            build=lambda ctx: CallSpec(
                ECHO_METHOD,
                request=ECHO_PAYLOAD,
                metadata=_bearer(ctx.organization()["secret_key"]),
            ),
            description="the same echo on the SUT with an sk key, warm verification cache",
            reference=BARE_ECHO,
        ),
        Case(
            name="cold_key_verification",
            target=SUT,
            build=lambda ctx: CallSpec(
                ECHO_METHOD,
                variants=tuple(
                    (ECHO_PAYLOAD, _bearer(key)) for key in _fresh_admin_keys(ctx, COLD_KEYS)
                ),
            ),
            description=f"same echo, each of {COLD_KEYS} new keys used once: bcrypt every call",
            reference=AUTHENTICATED_CALL,
            concurrency=1,
            warmup_seconds=0,
            max_calls=COLD_KEYS,
            rounds=1,
        ),
        Case(
            name="list_api_keys",
            target=SUT,
            build=lambda ctx: CallSpec(
                LIST_API_KEYS, metadata=_bearer(ctx.organization()["secret_key"])
            ),
            description="sk ADMIN ListApiKeys: auth + one database read (SQLite by default)",
            reference=BARE_ECHO,
        ),
    ]


CONSUMER_ECHO = "consumer_echo"


def _publishable_key(ctx: BenchContext) -> str:
    """A new test-mode pk of the bench organization, created through the SUT's API."""
    from fanfare.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
    from fanfare.common.v1 import common_pb2

    request = auth_service_pb2.CreateApiKeyRequest(
        kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="bench web"
    )
    with grpc.insecure_channel(ctx.sut_address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        response = stub.CreateApiKey(
            request, metadata=_bearer(ctx.organization()["secret_key"]), timeout=30
        )
    secret: str = response.secret
    return secret


def _consumer_echo(ctx: BenchContext) -> CallSpec:
    """The consumer echo with one guest session's access token, reused on every call.

    The token lives ``FANFARE_ACCESS_TOKEN_TTL_SECONDS`` (15 min by default) from the
    start of the run: longer runs need a longer TTL (``--sut-env``).
    """
    publishable_key = _publishable_key(ctx)
    device = new_device()
    session = create_guest_session(ctx.sut_address, publishable_key, device)
    return CallSpec(
        CONSUMER_ECHO_METHOD,
        request=ECHO_PAYLOAD,
        metadata=consumer_metadata(publishable_key, device, session.access_token),
    )


def consumer_cases() -> list[Case]:
    """Consumer calls: a pk + consumer token call, and refresh-token rotation."""
    return [
        Case(
            name=CONSUMER_ECHO,
            target=SUT,
            build=_consumer_echo,
            description="the same echo with pk + consumer token + device, warm token cache",
            reference=BARE_ECHO,
        ),
        Case(
            name="refresh_session",
            target=SUT,
            build=lambda ctx: CallSpec(REFRESH_SESSION, chain=RefreshChain(_publishable_key(ctx))),
            description="RefreshSession, one guest session per worker, newest token each call",
            reference=BARE_ECHO,
        ),
    ]


def default_cases() -> list[Case]:
    """What ``bench.run`` without ``--cases`` measures (about 40 s, no Redis needed)."""
    return [*baseline_cases(), *interceptor_cases(), *auth_cases(), *consumer_cases()]


def all_cases() -> list[Case]:
    """Every registered case, references first: the defaults, then the queue cases
    (``bench.queues``: minutes long, need ``--redis``; selected by name or group)."""
    return [*default_cases(), *queue_cases()]


def select(cases: Sequence[Case], names: str | None) -> list[Case]:
    """The named cases or groups (comma-separated) plus the references they need.

    Without names: the default cases (the queue cases only run when named).
    """
    if not names:
        default = {case.name for case in default_cases()}
        return [case for case in cases if case.name in default]
    wanted: set[str] = set()
    for name in (name.strip() for name in names.split(",")):
        if name:
            wanted.update(GROUPS.get(name, (name,)))
    unknown = wanted - {case.name for case in cases}
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
    while True:  # references of references (get_position_1m → _1k → bare_echo)
        needed = {case.reference for case in cases if case.name in wanted and case.reference}
        if needed <= wanted:
            break
        wanted |= needed
    return [case for case in cases if case.name in wanted]


def _env_pair(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key.startswith("FANFARE_"):
        raise argparse.ArgumentTypeError("expected FANFARE_NAME=value")
    if key in _HARNESS_OWNED_ENV:
        raise argparse.ArgumentTypeError(f"{key} is set by the harness (loopback, fresh dir)")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    defaults = RunOptions()
    parser = argparse.ArgumentParser(description="Fanfare gRPC benchmarks vs a bare grpc.aio.")
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration_seconds,
        help="measured seconds per case and round (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup_seconds,
        help="warm-up seconds before each measurement (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="calls in flight (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="measurements per case, order alternating (default %(default)s)",
    )
    parser.add_argument(
        "--max-calls",
        type=int,
        default=defaults.max_calls,
        help="measured calls per case and round at most (default %(default)s)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=defaults.client_processes,
        help="load generator processes (default %(default)s)",
    )
    parser.add_argument(
        "--cases",
        help="comma-separated case names or groups "
        f"({', '.join(GROUPS)}); default: all but the queue cases",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--log-level", default="warning", help="FANFARE_LOG_LEVEL of the SUT (default %(default)s)"
    )
    parser.add_argument(
        "--sut-tree",
        type=Path,
        help="run the SUT from this checkout's src/ and generated/ (e.g. a `git archive` "
        "export of a commit) instead of the installed package",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="run the SUT on this Redis (e.g. redis://127.0.0.1:6379/0) under a fresh key "
        "prefix, deleted after the run; the queue cases need it",
    )
    parser.add_argument(
        "--sut-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="FANFARE_NAME=VALUE",
        help="extra SUT environment (repeatable)",
    )
    return parser


def options_from(arguments: argparse.Namespace) -> RunOptions:
    """Validated run options from the parsed command line."""
    if arguments.duration <= 0 or arguments.warmup < 0 or arguments.rounds < 1:
        raise SystemExit("--duration must be > 0, --warmup >= 0, --rounds >= 1")
    if arguments.concurrency < 1 or arguments.clients < 1 or arguments.max_calls < 1:
        raise SystemExit("--concurrency, --clients and --max-calls must be >= 1")
    if arguments.redis and _REDIS_ENV & {key for key, _ in arguments.sut_env}:
        raise SystemExit("--redis sets FANFARE_REDIS_URL and FANFARE_REDIS_PREFIX itself")
    if arguments.sut_tree and not (arguments.sut_tree / "src" / "fanfare_grpc").is_dir():
        raise SystemExit(f"--sut-tree {arguments.sut_tree}: no src/fanfare_grpc there")
    return RunOptions(
        concurrency=arguments.concurrency,
        warmup_seconds=arguments.warmup,
        duration_seconds=arguments.duration,
        max_calls=arguments.max_calls,
        rounds=arguments.rounds,
        client_processes=arguments.clients,
        sut=SutOptions(
            log_level=arguments.log_level,
            extra_env=dict(arguments.sut_env),
            source_tree=arguments.sut_tree,
            redis_url=arguments.redis,
        ),
    )


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Turn a signal into ``SystemExit`` so that every ``finally`` runs."""
    raise SystemExit(128 + signum)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    arguments = build_parser().parse_args(argv)
    cases = select(all_cases(), arguments.cases)
    if arguments.list:
        for case in cases:
            print(f"{case.name:26} {case.target:8} {case.description}")
        return 0
    options = options_from(arguments)
    # SIGTERM unwinds like Ctrl-C, so the servers and clients are still stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        results = run_cases(cases, options, progress=_progress)
    except (ServerStartError, RuntimeError, TimeoutError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    recorded = dataclasses.asdict(options)
    command = ["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)]
    env = environment(recorded, command, arguments.sut_tree)
    if arguments.json_out is not None:
        arguments.json_out.write_text(to_json(results, env) + "\n")
    if arguments.json:
        print(to_json(results, env))
    else:
        print(f"{env['date']} · {env['cpu_count']} CPUs · SUT: {env['sut_source']}\n")
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
