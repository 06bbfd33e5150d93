"""Celery workers: the app config and thin tasks that call ``sanitizer.pipeline``."""
