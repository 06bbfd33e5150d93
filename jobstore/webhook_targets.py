"""Where a webhook may go: public addresses only, unless an operator allows a host.

Checked twice: when a job is submitted (the URL's host is resolved and every address must be
allowed) and again when the worker delivers (the name is resolved once more, every address
checked, and the connection goes to the checked address, so a DNS answer that changes between
the check and the connect, a rebind, cannot reach an internal service). Redirects are never
followed. Private, loopback, link-local, reserved, multicast and unspecified addresses are
refused (``ipaddress``'s ``is_global``); so are credentials in the URL and schemes other than
http/https. Operators who need internal hooks list them in ``SANITIZER_WEBHOOK_ALLOW_HOSTS``
(host names, addresses or CIDR networks, comma-separated).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]


class WebhookTargetError(ValueError):
    """The URL may not be called; the message says why and how to fix it."""


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    address: str  # the checked address the connection must go to


def _allowed(host: str, address: str, allow: Iterable[str]) -> bool:
    ip = ipaddress.ip_address(address)
    for entry in allow:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == host.lower():
            return True
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_url(url: str, allow: Iterable[str] = (), resolver: Resolver = _resolve) -> Target:
    """The target of ``url`` with the address to connect to, or WebhookTargetError."""
    allow = list(allow)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookTargetError(f"webhook_url must be http or https, not '{parts.scheme}'")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetError(
            "webhook_url must not carry credentials (user:pass@host); every delivery is "
            "signed (webhook-signature header): verify that instead"
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookTargetError("webhook_url has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookTargetError(f"webhook_url has a bad port: {exc}") from exc
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise WebhookTargetError(f"webhook_url's host '{host}' does not resolve ({exc})") from exc
    if not addresses:
        raise WebhookTargetError(f"webhook_url's host '{host}' does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        real = mapped or ip
        if not real.is_global and not _allowed(host, str(real), allow):
            raise WebhookTargetError(
                f"webhook_url's host '{host}' resolves to {address}, a private, loopback, "
                "link-local or reserved address; webhooks go to public addresses only "
                "(an operator can allow an internal host with SANITIZER_WEBHOOK_ALLOW_HOSTS)"
            )
    return Target(url=url, host=host, port=port, address=addresses[0])


def pinned_request_args(target: Target) -> dict:
    """httpx arguments that connect to ``target.address`` while speaking to ``target.host``
    (Host header, TLS SNI and certificate check): the address checked is the one used."""
    parts = urlsplit(target.url)
    ip = ipaddress.ip_address(target.address.split("%", 1)[0])
    netloc_host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{netloc_host}:{target.port}"
    url = parts._replace(netloc=netloc).geturl()
    host_header = parts.hostname or target.host
    if parts.port:
        host_header = f"{host_header}:{parts.port}"
    return {
        "url": url,
        "headers": {"host": host_header},
        "extensions": {"sni_hostname": target.host} if parts.scheme == "https" else {},
    }
