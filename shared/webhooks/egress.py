"""SSRF-safe egress: which URLs a tenant may name, and a POST that goes only where it was checked.

Every rule has a name, quoted in the 422 a refused URL gets (at registration and
at submit) and in the attempt log when a delivery is refused at send time. A URL
passes when it is https, carries no credentials, and every address its host
resolves to is public. The request then connects to one of exactly those
addresses (the TLS handshake still names and verifies the host), so DNS cannot
be changed between the check and the connection; redirects are never followed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
DEFAULT_TIMEOUT_S = 15.0
RESOLVE_TIMEOUT_S = 2.0
# A receiver's answer is only its status; a little of the body is read so the
# connection closes cleanly, the rest is never read.
MAX_RESPONSE_BYTES = 4096
# Retry-After beyond a day is treated as a day: a receiver cannot park a delivery for ever.
MAX_RETRY_AFTER_S = 24 * 3600

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class UrlRefused(Exception):
    """A URL a webhook may not target; `rule` names the rule it breaks."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


# (network, rule), checked in order; the first match names the refusal.
_V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), rule)
    for net, rule in (
        ("0.0.0.0/8", "unspecified-address"),
        ("127.0.0.0/8", "loopback-address"),
        ("10.0.0.0/8", "private-address"),
        ("172.16.0.0/12", "private-address"),
        ("192.168.0.0/16", "private-address"),
        ("100.64.0.0/10", "cgnat-address"),
        ("169.254.0.0/16", "link-local-address"),
        ("224.0.0.0/4", "multicast-address"),
        ("240.0.0.0/4", "reserved-address"),  # includes 255.255.255.255
        ("192.0.0.0/24", "reserved-address"),
        ("192.0.2.0/24", "reserved-address"),
        ("192.88.99.0/24", "reserved-address"),
        ("198.18.0.0/15", "reserved-address"),
        ("198.51.100.0/24", "reserved-address"),
        ("203.0.113.0/24", "reserved-address"),
    )
)
_V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), rule)
    for net, rule in (
        ("::/128", "unspecified-address"),
        ("::1/128", "loopback-address"),
        ("fe80::/10", "link-local-address"),
        ("fc00::/7", "unique-local-address"),
        ("fec0::/10", "private-address"),  # deprecated site-local
        ("ff00::/8", "multicast-address"),
        ("64:ff9b:1::/48", "private-address"),  # local-use NAT64
        ("::/96", "reserved-address"),  # IPv4-compatible, deprecated
        ("100::/64", "reserved-address"),
        ("2001::/23", "reserved-address"),  # IETF protocol assignments, Teredo
        ("2001:db8::/32", "reserved-address"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_RULE_TEXT = {
    "unspecified-address": "an unspecified address",
    "loopback-address": "a loopback address",
    "private-address": "a private address",
    "cgnat-address": "a shared (CGNAT) address",
    "link-local-address": "a link-local address",
    "multicast-address": "a multicast address",
    "reserved-address": "a reserved or special-purpose address",
    "unique-local-address": "an IPv6 unique local address",
    "non-public-address": "not a public address",
}


def address_rule(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """The rule `address` breaks, or None if it is public (or loopback, when allowed)."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 is judged as the IPv4 address it reaches.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_rule(embedded, allow_loopback=allow_loopback)
        rules: Sequence[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = _V6_RULES
    else:
        rules = _V4_RULES
    for network, rule in rules:
        if address in network:
            if rule == "loopback-address" and allow_loopback:
                return None
            return rule
    # Whatever else the standard library knows is not globally reachable.
    return None if address.is_global else "non-public-address"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (only these addresses) and what to ask for."""

    url: str
    scheme: str
    host: str  # as TLS verifies it and the Host header names it
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]


def _resolve_with_system(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# getaddrinfo has no timeout of its own: it runs here and is waited for with one.
_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


def system_resolver(timeout_s: float = RESOLVE_TIMEOUT_S) -> Resolver:
    def resolve(host: str, port: int) -> Sequence[str]:
        future = _resolver_pool.submit(_resolve_with_system, host, port)
        return future.result(timeout=timeout_s)

    return resolve


def check_url(  # noqa: PLR0912 - one branch per rule
    url: str, *, allow_loopback: bool, resolve: Resolver
) -> Target:
    """The `Target` for `url`, or `UrlRefused` naming the rule it breaks."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("invalid-url", "the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused("url-too-long", f"the URL is over {MAX_URL_CHARS} characters")
    if not url.isascii() or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("invalid-url", "the URL holds spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("invalid-url", f"the URL does not parse ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_loopback):
        raise UrlRefused("https-required", "only https URLs may receive webhooks")
    if "@" in parts.netloc:
        raise UrlRefused("credentials-in-url", "the URL may not carry a user name or password")
    host = parts.hostname
    if not host or "%" in host:
        raise UrlRefused("invalid-url", "the URL names no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise UrlRefused("invalid-url", "the port is out of range")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: Sequence[str] = [str(literal)]
    else:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError, concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise UrlRefused("unresolvable-host", f"{host} does not resolve ({exc})") from None
        if not addresses:
            raise UrlRefused("unresolvable-host", f"{host} resolves to no address")
    checked: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise UrlRefused("unresolvable-host", f"{host} resolved to {text!r}") from None
        rule = address_rule(address, allow_loopback=allow_loopback)
        if rule is not None:
            raise UrlRefused(
                rule, f"{host} resolves to {address}, {_RULE_TEXT.get(rule, 'refused')}"
            )
        checked.append(str(address))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, scheme, host, port, path, tuple(checked))


@dataclass(frozen=True)
class Response:
    """What one POST got: a status, or the error that stopped it (never both)."""

    status: int | None
    latency_s: float
    retry_after_s: float | None = None
    error: str | None = None  # "timeout", "connection", "tls", "refused-address"
    detail: str = ""


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to one checked address, whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As `_PinnedHTTP`, then TLS naming (and verifying) the URL's host."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


class Egress:
    """Checks a URL and POSTs to it: a fresh check (and resolution) for every request."""

    def __init__(
        self,
        *,
        allow_loopback: bool,
        resolve: Resolver | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.allow_loopback = allow_loopback
        self._resolve = resolve or system_resolver()
        self._timeout_s = timeout_s
        # Made at the first HTTPS delivery: loading the CA store cost every cold start ~40 ms.
        self._tls = tls
        self._clock = clock
        self._wall = wall_clock

    def check(self, url: str) -> Target:
        return check_url(url, allow_loopback=self.allow_loopback, resolve=self._resolve)

    def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        started = self._clock()
        try:
            target = self.check(url)
        except UrlRefused as exc:
            return Response(None, 0.0, error="refused-address", detail=str(exc))
        return self._post(target, headers, body, started)

    def _post(
        self, target: Target, headers: Mapping[str, str], body: bytes, started: float
    ) -> Response:
        deadline = started + self._timeout_s
        conn: http.client.HTTPConnection | None = None
        failure = "no address to connect to"
        for address in target.addresses:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            conn = self._connection(target, address, remaining)
            try:
                conn.connect()
            except ssl.SSLError as exc:
                conn.close()
                return Response(None, self._clock() - started, error="tls", detail=_short(exc))
            except OSError as exc:
                conn.close()
                conn = None
                failure = _short(exc)
                continue
            break
        if conn is None or conn.sock is None:
            kind = "timeout" if deadline - self._clock() <= 0 else "connection"
            return Response(None, self._clock() - started, error=kind, detail=failure)
        aborted = threading.Event()
        # The socket timeout bounds each read; this bounds the whole exchange, so a
        # receiver trickling one byte at a time cannot hold a delivery past the limit.
        watchdog = threading.Timer(max(0.0, deadline - self._clock()), _abort, (conn, aborted))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", target.path, body=body, headers=dict(headers))
            answer = conn.getresponse()
            answer.read(MAX_RESPONSE_BYTES)
            if aborted.is_set():
                # Cut off mid-answer: what was parsed (a status line, say) does not count.
                return Response(None, self._clock() - started, error="timeout", detail="cut off")
            retry_after = parse_retry_after(answer.getheader("Retry-After"), self._wall())
            return Response(answer.status, self._clock() - started, retry_after_s=retry_after)
        except TimeoutError as exc:
            return Response(None, self._clock() - started, error="timeout", detail=_short(exc))
        except (OSError, http.client.HTTPException) as exc:
            kind = "timeout" if aborted.is_set() else "connection"
            return Response(None, self._clock() - started, error=kind, detail=_short(exc))
        finally:
            watchdog.cancel()
            conn.close()

    def _connection(
        self, target: Target, address: str, timeout: float
    ) -> http.client.HTTPConnection:
        if target.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return _PinnedHTTPS(target.host, target.port, address, timeout, self._tls)
        return _PinnedHTTP(target.host, target.port, address, timeout)


def _abort(conn: http.client.HTTPConnection, aborted: threading.Event) -> None:
    aborted.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delay-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER_S))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), float(MAX_RETRY_AFTER_S))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
