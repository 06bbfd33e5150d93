"""What the API and the workers share: records, the status machine, the session, artifacts.

Knows nothing of HTTP or Celery; never imports torch.
"""
