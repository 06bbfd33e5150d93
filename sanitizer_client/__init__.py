"""Python SDK of the sanitization service (httpx; sync and async over one implementation).

    from sanitizer_client import Client

    with Client() as c:                              # $SANITIZER_URL, $SANITIZER_API_KEY
        adapter = c.files.upload("adapter/", purpose="adapter")
        data = c.files.upload("clean.jsonl", purpose="dataset")
        job = c.jobs.create(method="w2sdefense", base_model="org/model",
                            adapter_file=adapter, clean_dataset_file=data)
        job = c.jobs.wait(job.id, on_progress=lambda j: print(j.progress))
        c.jobs.download_adapter(job.id, "sanitized/")

See docs/CLIENT.md.
"""

from sanitizer_client._version import __version__ as __version__
from sanitizer_client.client import AsyncClient, Client  # noqa: E402
from sanitizer_client.errors import (  # noqa: E402
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ChecksumMismatchError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SanitizerClientError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from sanitizer_client.types import (  # noqa: E402
    TERMINAL_STATUSES,
    AdapterDownload,
    Event,
    FileObject,
    Job,
    Page,
    Progress,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AdapterDownload",
    "AsyncClient",
    "AuthenticationError",
    "ChecksumMismatchError",
    "Client",
    "ConflictError",
    "Event",
    "FileObject",
    "Job",
    "NotFoundError",
    "Page",
    "Progress",
    "RateLimitError",
    "SanitizerClientError",
    "ServerError",
    "ServiceUnavailableError",
    "TERMINAL_STATUSES",
    "ValidationError",
    "WaitTimeoutError",
]
