"""SSRF rules (a table of addresses and URLs) and the pinned, redirect-free POST."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.receiver import receiver
from shared.webhooks.egress import (
    Egress,
    UrlRefused,
    address_rule,
    check_url,
    system_resolver,
)

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
REFUSED = [
    ("127.0.0.1", "loopback-address"),
    ("127.1.2.3", "loopback-address"),
    ("::1", "loopback-address"),
    ("::ffff:127.0.0.1", "loopback-address"),
    ("10.0.0.1", "private-address"),
    ("172.16.5.4", "private-address"),
    ("172.31.255.255", "private-address"),
    ("192.168.1.1", "private-address"),
    ("::ffff:10.1.2.3", "private-address"),
    ("64:ff9b::a00:1", "private-address"),  # NAT64 of 10.0.0.1
    ("2002:a00:1::1", "private-address"),  # 6to4 of 10.0.0.1
    ("fec0::1", "private-address"),
    ("169.254.169.254", "link-local-address"),  # the metadata server
    ("fe80::1", "link-local-address"),
    ("100.64.0.1", "cgnat-address"),
    ("100.127.255.254", "cgnat-address"),
    ("224.0.0.1", "multicast-address"),
    ("239.255.255.250", "multicast-address"),
    ("ff02::1", "multicast-address"),
    ("0.0.0.0", "unspecified-address"),
    ("0.1.2.3", "unspecified-address"),
    ("::", "unspecified-address"),
    ("fd00::1", "unique-local-address"),
    ("fc00::1", "unique-local-address"),
    ("255.255.255.255", "reserved-address"),
    ("240.0.0.1", "reserved-address"),
    ("192.0.2.1", "reserved-address"),
    ("198.18.0.1", "reserved-address"),
    ("203.0.113.9", "reserved-address"),
    ("2001:db8::1", "reserved-address"),
    ("2001::1", "reserved-address"),  # Teredo
    ("::10.0.0.1", "reserved-address"),  # IPv4-compatible
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_rule(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "rule"), REFUSED)
def test_every_non_public_address_is_refused_by_name(address: str, rule: str) -> None:
    assert address_rule(ipaddress.ip_address(address)) == rule


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_the_loopback_flag_allows_loopback_only(address: str) -> None:
    assert address_rule(ipaddress.ip_address(address), allow_loopback=True) is None
    assert address_rule(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) == "private-address"


def fake_dns(table: dict[str, Sequence[str]]) -> object:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


DNS = fake_dns(
    {
        "hooks.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "mixed.example": ["93.184.216.34", "10.0.0.7"],
        "internal.example": ["192.168.0.10"],
        "empty.example": [],
    }
)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://hooks.example/x", "https-required"),
        ("ftp://hooks.example/x", "https-required"),
        ("hooks.example/x", "https-required"),
        ("https://user:pw@hooks.example/x", "credentials-in-url"),
        ("https://user@hooks.example/x", "credentials-in-url"),
        ("https:///x", "invalid-url"),
        ("https://hooks.example:99999/x", "invalid-url"),
        ("https://hooks.example:0/x", "invalid-url"),
        ("https://hooks .example/x", "invalid-url"),
        ("https://hooks.example/\x00", "invalid-url"),
        ("https://höoks.example/", "invalid-url"),
        ("https://[fe80::1%25eth0]/", "invalid-url"),
        ("https://hooks.example/" + "a" * 2100, "url-too-long"),
        ("https://nowhere.example/", "unresolvable-host"),
        ("https://empty.example/", "unresolvable-host"),
        ("https://mixed.example/", "private-address"),  # every address must be public
        ("https://internal.example/", "private-address"),
        ("https://10.1.1.1/", "private-address"),
        ("https://[::1]/", "loopback-address"),
        ("https://[::ffff:169.254.169.254]/", "link-local-address"),
        ("https://169.254.169.254/computeMetadata/v1/", "link-local-address"),
    ],
)
def test_url_rules(url: str, rule: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url, allow_loopback=False, resolve=DNS)  # type: ignore[arg-type]
    assert refused.value.rule == rule


def test_a_passing_url_keeps_its_port_path_and_query_and_every_address() -> None:
    target = check_url(
        "https://hooks.example:8443/in/aia?x=1#frag",
        allow_loopback=False,
        resolve=DNS,  # type: ignore[arg-type]
    )
    assert (target.host, target.port, target.path) == ("hooks.example", 8443, "/in/aia?x=1")
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")


@pytest.mark.parametrize("url", ["https://localhost/x", "https://2130706433/", "https://0x7f.1/"])
def test_loopback_in_disguise_is_refused_through_the_system_resolver(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url, allow_loopback=False, resolve=system_resolver())
    assert refused.value.rule == "loopback-address"


def test_http_is_allowed_only_with_the_loopback_flag() -> None:
    target = check_url("http://127.0.0.1:9/x", allow_loopback=True, resolve=DNS)  # type: ignore[arg-type]
    assert (target.scheme, target.port, target.addresses) == ("http", 9, ("127.0.0.1",))


# The POST itself, against servers on loopback (the flag on)


def test_posts_to_the_checked_address_without_resolving_again() -> None:
    calls: list[str] = []
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])

    def rebinding(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        return next(answers)

    with receiver() as server:
        port = server.server_address[1]
        egress = Egress(allow_loopback=True, resolve=rebinding)
        response = egress.post(f"http://rebind.test:{port}/hook", {"x-a": "1"}, b"{}")
        assert response.status == 200, response
        assert calls == ["rebind.test"]  # one resolution: the one that was checked
        (got,) = server.on("/hook")
        assert got.headers["host"] == f"rebind.test:{port}"
        assert got.headers["x-a"] == "1"
        assert got.body == b"{}"


def test_redirects_are_not_followed() -> None:
    with receiver() as server:
        server.script("/moved", (302, {"Location": f"{server.url}/elsewhere"}))
        response = Egress(allow_loopback=True).post(f"{server.url}/moved", {}, b"{}")
        assert response.status == 302
        assert server.on("/elsewhere") == []


def test_retry_after_is_read_from_the_answer() -> None:
    with receiver() as server:
        server.script("/busy", (429, {"Retry-After": "42"}))
        response = Egress(allow_loopback=True).post(f"{server.url}/busy", {}, b"{}")
        assert (response.status, response.retry_after_s) == (429, 42)


def test_an_address_refused_at_send_time_is_reported_not_contacted() -> None:
    with receiver() as server:
        response = Egress(allow_loopback=False).post(
            f"https://127.0.0.1:{server.server_address[1]}/x", {}, b"{}"
        )
        assert response.status is None
        assert response.error == "refused-address"
        assert "loopback-address" in response.detail
        assert server.received == []


def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    response = Egress(allow_loopback=True).post(f"http://127.0.0.1:{port}/x", {}, b"{}")
    assert (response.status, response.error) == (None, "connection")


@contextlib.contextmanager
def silent_server(trickle: bool) -> Iterator[int]:
    """Accepts and reads, then never answers (or answers one header byte at a time)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if trickle:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    with contextlib.suppress(OSError):
                        conn.sendall(b"X")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_the_whole_exchange_has_one_deadline(trickle: bool) -> None:
    with silent_server(trickle) as port:
        response = Egress(allow_loopback=True, timeout_s=1.0).post(
            f"http://127.0.0.1:{port}/x", {}, b"{}"
        )
    assert response.status is None
    assert response.error == "timeout", response


# TLS: the connection goes to the checked address, the handshake names the URL's host.


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_tls_verifies_the_urls_host_on_the_pinned_address(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    trust = ssl.create_default_context(cafile=str(cert))
    dns = fake_dns({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    egress = Egress(allow_loopback=True, resolve=dns, tls=trust)  # type: ignore[arg-type]
    with tls_server(cert, key) as port:
        assert egress.post(f"https://hooks.test:{port}/in", {}, b"{}").status == 204
        wrong = egress.post(f"https://other.test:{port}/in", {}, b"{}")
    assert (wrong.status, wrong.error) == (None, "tls")
