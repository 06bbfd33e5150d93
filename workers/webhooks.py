"""Deliver one webhook, signed the Standard Webhooks way; the task retries with backoff."""

from __future__ import annotations

import json
import logging

import httpx
from standardwebhooks import Webhook

from jobstore.db import session_scope
from jobstore.models import Job, Project, WebhookDelivery, utcnow
from jobstore.settings import get_settings
from jobstore.webhook_targets import WebhookTargetError, check_url, pinned_request_args

log = logging.getLogger(__name__)


class RetryLater(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(f"retry in {delay:g}s")
        self.delay = delay


def sign(secret: str, msg_id: str, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    now = utcnow()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
        "user-agent": "backdoor-sanitizer-webhooks/1",
    }


def deliver(delivery_id: str) -> str:
    settings = get_settings()
    with session_scope() as s:
        d = s.get(WebhookDelivery, delivery_id)
        if d is None or d.status != "pending":
            return "skipped"
        job = s.get(Job, d.job_id)
        project = s.get(Project, job.project_id) if job else None
        if project is None:
            d.status = "failed"
            return "failed"
        url, payload, secret = d.url, d.payload, project.webhook_secret
        d.attempts += 1
        attempt = d.attempts
    body = json.dumps(payload, separators=(",", ":"))
    code: int | None = None
    error: str | None = None
    try:
        # checked again at delivery (the name may resolve elsewhere now) and the connection
        # goes to the address just checked: a DNS rebind cannot reach an internal service
        target = check_url(url, settings.webhook_allow)
        pinned = pinned_request_args(target)
        with httpx.Client(timeout=settings.webhook_timeout, follow_redirects=False) as http:
            r = http.post(
                pinned["url"],
                content=body,
                headers={**sign(secret, delivery_id, body), **pinned["headers"]},
                extensions=pinned["extensions"],
            )
        code = r.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except WebhookTargetError as exc:
        error, attempt = f"refused: {exc}", settings.webhook_max_retries + 1  # final, no retry
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with session_scope() as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert d is not None
        d.last_status_code, d.last_error = code, error
        if error is None:
            d.status, d.delivered_at = "delivered", utcnow()
        elif attempt > settings.webhook_max_retries:
            d.status = "failed"
        status = d.status
    if status == "pending":
        delay = settings.webhook_backoff * 2 ** (attempt - 1)
        log.info(
            "webhook %s attempt %d failed (%s); retry in %gs", delivery_id, attempt, error, delay
        )
        raise RetryLater(delay)
    return status
