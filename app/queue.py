"""The API's side of the broker: publish tasks by name, check the broker, read queue depth.

No worker code is imported: tasks are addressed as ``sanitizer.sanitize`` and
``sanitizer.deliver_webhook`` with JSON arguments (ids only).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from celery import Celery

from jobstore.settings import Settings, get_settings

log = logging.getLogger(__name__)

SANITIZE_TASK = "sanitizer.sanitize"
WEBHOOK_TASK = "sanitizer.deliver_webhook"


class Queue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery = Celery("sanitizer-api", broker=settings.broker_url)
        self.celery.conf.update(
            broker_transport_options=settings.broker_transport_options(),
            broker_connection_timeout=settings.enqueue_timeout,
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
        )
        self._policy = {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": settings.enqueue_timeout / 2,
            "interval_max": settings.enqueue_timeout,
        }

    def _send(self, name: str, args: list[object], queue: str) -> bool:
        try:
            self.celery.send_task(
                name, args=args, queue=queue, retry=True, retry_policy=self._policy
            )
            return True
        except Exception as exc:  # broker down: the caller keeps the record and retries later
            log.warning("could not publish %s%s: %s", name, args, exc)
            return False

    def enqueue(self, job_id: str, attempt: int) -> bool:
        return self._send(SANITIZE_TASK, [job_id, attempt], self.settings.queue)

    def send_webhook(self, delivery_id: str) -> bool:
        return self._send(WEBHOOK_TASK, [delivery_id], self.settings.webhooks_queue)

    def broker_started_at(self) -> datetime | None:
        """When the broker last started, if it can tell (Redis: ``INFO server``); None for
        the embedded broker or on any error. A job sent before then lost its message."""
        if self.settings.embedded:
            return None
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.settings.enqueue_timeout)
                info = conn.default_channel.client.info("server")
            return datetime.now(UTC) - timedelta(seconds=int(info["uptime_in_seconds"]))
        except Exception as exc:
            log.debug("broker start time unknown: %s", exc)
            return None

    def depth(self) -> dict[str, int]:
        """Messages waiting per queue (not counting those a worker holds); raises when the
        broker is unreachable, so it doubles as the readiness probe."""
        out: dict[str, int] = {}
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=self.settings.enqueue_timeout)
            ch = conn.default_channel
            for q in (self.settings.queue, self.settings.webhooks_queue):
                out[q] = int(ch._size(q))  # virtual transports (redis, sqla) count here
        return out


@lru_cache
def get_queue() -> Queue:
    return Queue(get_settings())
