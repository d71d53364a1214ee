"""The grpc.aio server: services, health, reflection, lifecycle and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from fanfare_grpc.app import Application
from fanfare_grpc.health import ServingStatusMonitor
from fanfare_grpc.interceptors.chain import build_interceptor_chain
from fanfare_grpc.permissions import PERMISSIONS, MethodPolicy
from fanfare_grpc.servicers import register_servicers
from fanfare_grpc.settings import Settings
from fanfare_grpc.worker import Worker, background_jobs


def server_options(settings: Settings) -> tuple[tuple[str, int], ...]:
    """The grpc core options of the server."""
    return (
        # Without this, a second server could bind the same fixed port and share traffic.
        ("grpc.so_reuseport", 0),
        # gRPC's default soft limit (8 KiB) rejects oversized metadata at random with
        # RESOURCE_EXHAUSTED; with room above it, an oversized credential reaches
        # authentication and gets the same UNAUTHENTICATED as any other bad key.
        ("grpc.max_metadata_size", 32 * 1024),
        ("grpc.absolute_max_metadata_size", 64 * 1024),
        # Unlimited by default: one connection could hold thousands of calls. Past this,
        # a client's further calls wait in its own HTTP/2 queue, not in our memory.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    )


# Background tasks get this long to finish after cancellation (e.g. a final flush).
_TASK_STOP_SECONDS = 5.0


class ListenError(RuntimeError):
    """The listen address could not be bound."""


@dataclasses.dataclass
class RunningServer:
    """A started server and the background tasks that belong to it."""

    application: Application
    server: aio.Server
    host: str
    port: int
    monitor: ServingStatusMonitor
    _tasks: list[asyncio.Task[None]]
    _worker_stop: asyncio.Event

    @property
    def address(self) -> str:
        """``host:port`` clients can dial."""
        return f"{self.host}:{self.port}"

    async def shutdown(self, grace_seconds: float) -> None:
        """Drain: health NOT_SERVING, refuse new calls, let in-flight calls finish."""
        logger = self.application.logger
        logger.info("draining", extra={"grace_seconds": grace_seconds})
        await self.monitor.drain()
        self._worker_stop.set()
        await self.server.stop(grace_seconds)
        # Codes already promised to callers still go out (bounded by the SMTP timeout).
        await self.application.passwordless.drain_deliveries()
        await self.application.position_feed.close()
        for task in self._tasks:
            task.cancel()
        stopped, stuck = await asyncio.wait(self._tasks, timeout=_TASK_STOP_SECONDS)
        for task in stuck:
            logger.error("background task did not stop", extra={"task": task.get_name()})
        for task in stopped:
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "background task failed",
                    exc_info=task.exception(),
                    extra={"task": task.get_name()},
                )
        await self.application.close()
        logger.info("stopped")


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    root_certificates = (
        Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    )
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=root_certificates,
        require_client_auth=root_certificates is not None,
    )


async def start_server(
    application: Application,
    *,
    run_worker: bool = True,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
) -> RunningServer:
    """Build, bind and start the server; returns once it accepts calls.

    Args:
        application: The composition root's dependencies.
        run_worker: Also run the background jobs in this process.
        extra_handlers: Additional generic handlers (embedding, tests).

    Raises:
        ListenError: The listen address is in use or invalid.
        UnsharedCache: PostgreSQL without Redis.
        DatabaseUnreachable: The database cannot be reached.
        SchemaOutOfDate: The database is reachable but not migrated.
        CacheUnreachable: Redis does not answer.
        CacheMayEvict: Redis may evict keys (and eviction is not allowed).
        MasterKeyMismatch: The master keys do not open the deployment's canary.
        CacheNotPersistent: Redis persists nothing (and that is not allowed).
    """
    settings = application.settings
    logger = application.logger
    application.check_shared_state()
    # Refusing to start (one clear line) beats serving NOT_SERVING with an unknown
    # schema: a supervisor restarts us, and the operator sees what to fix.
    await application.check_cache()
    await application.check_schema()
    await application.check_master_keys()
    application.log_startup_warnings()

    server = aio.server(
        interceptors=build_interceptor_chain(application), options=server_options(settings)
    )
    service_names = register_servicers(server, application)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if extra_handlers:
        server.add_generic_rpc_handlers(tuple(extra_handlers))

    host = settings.listen.rpartition(":")[0]
    credentials = _server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {settings.listen}") from error
    if port == 0:
        raise ListenError(f"cannot listen on {settings.listen}")

    monitor = ServingStatusMonitor(
        health,
        service_names,
        application.database,
        application.cache,
        logger,
        master_key_alarm=application.master_key_alarm,
        interval_seconds=settings.health_check_interval_seconds,
        timeout_seconds=settings.health_check_timeout_seconds,
        outages=application.outages,
    )
    await monitor.probe_once()
    # Before the first call: a session confirmed from now on is covered by the markers.
    await application.session_revocations.start()
    await server.start()

    worker_stop = asyncio.Event()
    tasks = [
        asyncio.create_task(monitor.run(), name="health-monitor"),
        asyncio.create_task(application.key_usage.run(), name="key-usage"),
        asyncio.create_task(application.key_invalidation_listener.run(), name="key-invalidations"),
        asyncio.create_task(application.session_revocations.run(), name="session-revocations"),
        asyncio.create_task(application.key_invalidations.run(), name="key-change-broadcasts"),
    ]
    if run_worker:
        worker = Worker(
            background_jobs(application.queue_worker),
            logger,
            stop_grace_seconds=settings.shutdown_grace_seconds,
            outages=application.outages,
        )
        tasks.append(asyncio.create_task(worker.run(worker_stop), name="worker"))
    with contextlib.suppress(TimeoutError):
        # Start with invalidations flowing; until then cached keys re-check every 1 s.
        await asyncio.wait_for(application.key_invalidation_listener.subscribed.wait(), 2.0)
    running = RunningServer(application, server, host, port, monitor, tasks, worker_stop)
    logger.info(
        f"listening on {running.address}",
        extra={"tls": credentials is not None, "mtls": settings.tls_client_ca is not None},
    )
    return running


@contextlib.contextmanager
def stop_signals(signals: Sequence[signal.Signals]) -> Iterator[asyncio.Future[signal.Signals]]:
    """A future that the first of ``signals`` resolves, caught from entry on.

    Entered before the server starts, so a SIGTERM sent as soon as "listening" is
    logged is a graceful stop rather than the default instant death. On exit the
    default handling returns: a second signal during shutdown stops the process.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield received
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def serve(
    settings: Settings,
    *,
    run_worker: bool = True,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    permissions: Mapping[str, MethodPolicy] = PERMISSIONS,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    ``extra_handlers`` and ``permissions`` let an embedding program add services.
    """
    application = Application.build(settings, permissions=permissions)
    with stop_signals((signal.SIGTERM, signal.SIGINT)) as stop_signal:
        try:
            running = await start_server(
                application, run_worker=run_worker, extra_handlers=extra_handlers
            )
        except BaseException:
            await application.close()
            raise
        received = await stop_signal
    application.logger.info("signal received", extra={"signal": received.name})
    await running.shutdown(settings.shutdown_grace_seconds)


async def run_worker_process(settings: Settings) -> None:
    """``fanfare-grpc worker``: background jobs only, until SIGTERM or SIGINT."""
    application = Application.build(settings)
    stop = asyncio.Event()
    try:
        application.check_shared_state()
        await application.check_cache()
        await application.check_schema()
        await application.check_master_keys()
        application.log_startup_warnings()
        worker = Worker(
            background_jobs(application.queue_worker),
            application.logger,
            stop_grace_seconds=settings.shutdown_grace_seconds,
            outages=application.outages,
        )
        with stop_signals((signal.SIGTERM, signal.SIGINT)) as stop_signal:
            task = asyncio.create_task(worker.run(stop))
            received = await stop_signal
        application.logger.info("signal received", extra={"signal": received.name})
        stop.set()
        await task
    finally:
        await application.close()
