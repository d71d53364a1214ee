"""Statistical check: arriving early in the pre-queue confers no advantage.

Many scheduled queues, each with the same ten pre-queue arrivals in the same order;
after opening, the place of each arrival must be uniformly distributed. The store
draws places from the OS CSPRNG, so the test cannot fix a seed; instead each of the
ten chi-square tests uses a 10⁻⁷ significance level (about one false alarm in a
million runs for the ten together), while a FIFO (statistic ≈ 2700) or any order that
favours early arrivals fails it by orders of magnitude.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fanfare_grpc.app import Application
from fanfare_grpc.domain.organizations import NewOrganization, create_organization
from fanfare_grpc.domain.queue_config import NewQueue
from fanfare_grpc.domain.queues import QueueStatus
from fanfare_grpc.storage import migrate
from tests.clock import MutableClock
from tests.conftest import embedded_settings

RUNS = 300
ARRIVALS = 10
# chi-square critical value, 9 degrees of freedom, p = 1.08e-7 per arrival (at p = 0.001,
# ten tests per run failed about one run in a hundred)
CHI_SQUARE_CRITICAL = 50.0


def chi_square(counts: list[int], expected: float) -> float:
    return sum((count - expected) ** 2 / expected for count in counts)


async def test_early_arrivals_are_not_favoured(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    await migrate.upgrade_to_head(settings.effective_owner_database_url)
    clock = MutableClock()
    application = Application.build(settings, clock=clock)
    try:
        organization = (await new_organization_via(application)).organization.organization_id
        # places[i][p] = how often arrival i ended at place p
        places = [[0] * ARRIVALS for _ in range(ARRIVALS)]
        queue_ids = []
        for _ in range(RUNS):
            queue = await application.queue_config.create(
                organization,
                "test",
                NewQueue(
                    name="drop",
                    admission_rate_per_minute=60,
                    opens_at=clock() + dt.timedelta(minutes=1),
                ),
            )
            assert queue.status is QueueStatus.SCHEDULED
            queue_ids.append(queue.queue_id)
            for arrival in range(ARRIVALS):
                await application.queue_entries.enter(
                    organization,
                    "test",
                    queue.queue_id,
                    consumer_id=f"cons_{arrival}",
                    session_id=f"sess_{arrival}",
                    device_hash=f"device-{arrival}",
                )
        for queue_id in queue_ids:
            await application.queue_config.open(organization, "test", queue_id)
            for arrival in range(ARRIVALS):
                position = await application.queue_entries.position(
                    organization, "test", queue_id, f"cons_{arrival}"
                )
                places[arrival][position.position - 1] += 1
        expected = RUNS / ARRIVALS
        for arrival in range(ARRIVALS):
            statistic = chi_square(places[arrival], expected)
            assert statistic < CHI_SQUARE_CRITICAL, (arrival, places[arrival])
        # The first arrival's average place is the middle, not the front.
        first_mean = sum((p + 1) * n for p, n in enumerate(places[0])) / RUNS
        assert 4.5 < first_mean < 6.5
    finally:
        await application.close()


async def new_organization_via(application: Application) -> NewOrganization:
    return await create_organization(
        application.organizations, application.envelope, "Fair", application.clock()
    )
