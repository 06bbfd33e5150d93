"""The Celery app the workers run.

Long GPU jobs: ``acks_late`` + ``task_reject_on_worker_lost`` (a task whose worker dies is
redelivered, not lost), one task prefetched at a time, the broker's visibility timeout above
the hard time limit (so Redis does not hand a running job to a second worker), and a fresh
child process per job (``worker_max_tasks_per_child=1``: memory and CUDA state never leak
from one job into the next). torch is imported inside the task, so the parent process never
initialises CUDA before it forks.
"""

from __future__ import annotations

from celery import Celery

from jobstore.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("sanitizer", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job store, not Celery's result state, is the truth
        task_routes={
            "sanitizer.sanitize": {"queue": settings.queue},
            "sanitizer.deliver_webhook": {"queue": settings.webhooks_queue},
        },
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        task_time_limit=settings.job_time_limit,
        task_soft_time_limit=max(1, settings.job_time_limit - 60),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


celery_app = make_celery(get_settings())
