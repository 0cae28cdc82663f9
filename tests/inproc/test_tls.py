"""TLS: a TLS listener speaking HTTP/1.1 and HTTP/2 (ALPN), and https:// backends with verification.

Every certificate comes from a CA generated per test (``pki``). HTTP/2 is
checked with the h2 library over an ``ssl`` socket in a thread (the reactor
keeps running); everything else with Twisted clients and servers.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.events
import pytest
import pytest_twisted
import treq
import yaml
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet import reactor, threads
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from powerlb.config import ConfigError, config_from_mapping
from powerlb.errors import ConnectFailed
from powerlb.http2 import http11_headers, request_problem
from powerlb.server import Limits
from powerlb.settings import Config
from powerlb.testing import RecordingSink, TestBackend
from powerlb.tls import BackendTLS, pem_certificates, tls_failure
from powerlb.upstream import ProxyClientFactory
from tests.support.backends import make_backend
from tests.support.inproc import sleep, wait_for
from tests.support.pki import PKI, tls_listen

HOST = "127.0.0.1"


# --- a private CA and certificates signed by it -------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


@pytest.fixture
def https_client(pki: PKI) -> Any:
    """A treq client that trusts the test CA (no ALPN offered: HTTP/1.1)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pki.ca_pem))
    yield treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    pytest_twisted.blockon(pool.closeCachedConnections())


# --- an HTTP/2 client: the h2 library over an ssl socket, run in a thread ----------------

H2Request = Tuple[bytes, bytes, List[Tuple[bytes, bytes]], bytes]


class H2Response:
    """One HTTP/2 response: status, headers (lower-case names) and body."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: List[Tuple[bytes, bytes]] = []
        self.body = b""
        self.reset = False

    def header(self, name: bytes) -> Optional[bytes]:
        return next((v for k, v in self.headers if k == name), None)


def h2_exchange(port: int, ca_file: Path, requests: Sequence[H2Request]) -> Tuple[str, List[H2Response]]:
    """Send ``requests`` one after another on one HTTP/2 connection (ALPN); blocking, bounded by timeouts.

    Returns the negotiated ALPN protocol and the responses.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        protocol = sock.selected_alpn_protocol()
        if protocol != "h2":
            return protocol or "", []
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        responses = []
        for method, path, headers, body in requests:
            stream_id = conn.get_next_available_stream_id()
            pseudo = [(b":method", method), (b":path", path), (b":scheme", b"https"), (b":authority", b"lb")]
            conn.send_headers(stream_id, pseudo + headers, end_stream=not body)
            responses.append(_h2_receive(sock, conn, stream_id, body))
        conn.close_connection()
        sock.sendall(conn.data_to_send())
        return protocol, responses


def _h2_receive(sock: Any, conn: Any, stream_id: int, body: bytes) -> H2Response:
    response = H2Response()
    left = body
    while True:
        while left and conn.local_flow_control_window(stream_id) > 0:
            size = min(len(left), conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            conn.send_data(stream_id, left[:size], end_stream=size == len(left))
            left = left[size:]
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("powerlb closed the HTTP/2 connection")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                response.headers = [(k, v) for k, v in event.headers if k != b":status"]
                response.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                response.body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                response.reset = True
                return response
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                sock.sendall(conn.data_to_send())
                return response


def h2_in_thread(port: int, ca_file: Path, requests: Sequence[H2Request]) -> Any:
    return threads.deferToThread(h2_exchange, port, ca_file, requests)


# --- an https backend ----------------------------------------------------------------------


class TLSBackend(TestBackend):
    """A recording test backend serving HTTPS with ``key_file`` / ``cert_file``."""

    __test__ = False

    def __init__(self, name: str, key_file: Path, cert_file: Path) -> None:
        super().__init__(name)
        self.tls = CertificateOptions(
            privateKey=PrivateCertificate.loadPEM(
                key_file.read_bytes() + cert_file.read_bytes()
            ).privateKey.original,
            certificate=Certificate.loadPEM(cert_file.read_bytes()).original,
        )

    def start(self, port_number: int = 0) -> TLSBackend:
        self.port = reactor.listenSSL(port_number, self.site, self.tls, interface=HOST)
        self.port_number = self.port.getHost().port
        return self

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port_number}"


@pytest.fixture
def tls_backend(pki: PKI) -> Any:
    """``tls_backend(dns, ips)`` starts an HTTPS backend whose certificate has these names."""
    started: List[TLSBackend] = []

    def start(dns: Sequence[str] = (), ips: Sequence[str] = (HOST,)) -> TLSBackend:
        key, cert = pki.issue(f"backend{len(started)}", dns=dns, ips=ips)
        backend = TLSBackend(chr(ord("a") + len(started)), key, cert).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        pytest_twisted.blockon(backend.stop())


# --- the TLS listener ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tls_listener_serves_http11_with_forwarded_proto_https(
    make_backends, start_powerlb, pki, https_client
):
    (backend,) = make_backends(1)
    lb = start_powerlb([backend], listen=tls_listen(pki))
    url = f"https://{HOST}:{lb.port}"
    for _ in range(2):
        response = await https_client.get(url + "/page")
        assert response.code == 200
        assert response.version == (b"HTTP", 1, 1)
        assert b'"uri": "/page"' in await response.content()
    seen = backend.requests[-1]
    assert seen.header(b"x-forwarded-proto") == [b"https"]
    assert lb.service.counters.requests == 2


@pytest_twisted.ensureDeferred
async def test_plain_http_listener_offers_no_h2(make_backends, start_powerlb):
    (backend,) = make_backends(1)
    lb = start_powerlb([backend])
    site = lb.service.proxy_listener.factory
    assert site.acceptableProtocols() == [b"http/1.1"]


@pytest_twisted.ensureDeferred
async def test_h2_get_post_and_cache_hit_through_alpn(make_backends, start_powerlb, pki):
    (backend,) = make_backends(1)

    def echo(request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        return request.content.read()

    def cached(request: Any) -> bytes:
        request.setHeader(b"cache-control", b"max-age=60")
        return b"cacheable body"

    backend.routes[b"/echo"] = echo
    backend.routes[b"/cached"] = cached
    lb = start_powerlb([backend], listen=tls_listen(pki))
    big = bytes(range(256)) * 4096  # 1 MiB: past every HTTP/2 flow-control window
    protocol, (get, post, small_post, miss, hit, head) = await h2_in_thread(
        lb.port,
        pki.ca_file,
        [
            (b"GET", b"/page?q=1", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers")], b""),
            (b"POST", b"/echo", [(b"content-length", b"%d" % len(big))], big),
            (b"POST", b"/echo", [], b"no declared length"),
            (b"GET", b"/cached", [], b""),
            (b"GET", b"/cached", [], b""),
            (b"HEAD", b"/cached", [], b""),
        ],
    )
    assert protocol == "h2"
    assert get.status == 200
    assert b'"uri": "/page?q=1"' in get.body
    assert (post.status, len(post.body), post.body == big) == (200, len(big), True)
    assert (small_post.status, small_post.body) == (200, b"no declared length")
    assert (miss.status, miss.header(b"x-cache")) == (200, b"MISS")
    assert (hit.status, hit.header(b"x-cache"), hit.body) == (200, b"HIT", b"cacheable body")
    assert (head.status, head.header(b"x-cache"), head.body) == (200, b"HIT", b"")
    seen = [r for r in backend.requests if r.uri != b"/health"]
    first = seen[0]
    assert first.uri == b"/page?q=1"
    assert first.header(b"cookie") == [b"a=1; b=2"]
    assert first.header(b"x-forwarded-proto") == [b"https"]
    assert first.header(b"host") == [b"lb"]
    assert first.header(b"te") == []
    assert not any(name.startswith(b":") for name, _ in first.headers)
    assert seen[1].body == big
    assert seen[2].body == b"no declared length"
    assert [r.uri for r in seen] == [b"/page?q=1", b"/echo", b"/echo", b"/cached"]


@pytest_twisted.ensureDeferred
async def test_h2_limits_refuse_the_stream_and_keep_the_connection(make_backends, start_powerlb, pki):
    (backend,) = make_backends(1)
    lb = start_powerlb(
        [backend], listen=tls_listen(pki), max_header_size=1024, max_url_length=100, max_body=1000
    )
    _, (headers, url, body, declared, fine) = await h2_in_thread(
        lb.port,
        pki.ca_file,
        [
            (b"GET", b"/", [(b"x-big", b"x" * 2000)], b""),
            (b"GET", b"/" + b"u" * 200, [], b""),
            (b"POST", b"/", [], b"y" * 5000),
            (b"POST", b"/", [(b"content-length", b"5000")], b"y" * 5000),
            (b"GET", b"/after", [], b""),
        ],
    )
    assert (headers.status, headers.body) == (
        431,
        b"431 Request Header Fields Too Large: request headers larger than the limit\n",
    )
    assert url.status == 414
    assert (
        body.status == 413 or body.reset
    )  # the limit is hit mid-body: answered, or cut if already answering
    assert declared.status == 413
    assert fine.status == 200
    assert [r.uri for r in backend.requests if r.uri != b"/health"] == [b"/after"]


@pytest_twisted.ensureDeferred
async def test_http2_off_offers_only_http11_over_alpn(make_backends, start_powerlb, pki, https_client):
    (backend,) = make_backends(1)
    lb = start_powerlb([backend], listen=tls_listen(pki), http2=yaml.safe_load("off"))
    assert lb.service.proxy_listener.factory.acceptableProtocols() == [b"http/1.1"]
    protocol, responses = await h2_in_thread(lb.port, pki.ca_file, [(b"GET", b"/", [], b"")])
    assert (protocol, responses) == ("http/1.1", [])
    response = await https_client.get(f"https://{HOST}:{lb.port}/page")
    assert (response.code, response.version) == (200, (b"HTTP", 1, 1))
    await response.content()


@pytest.mark.parametrize(
    ("given", "http2"),
    [
        ("http2: off", False),
        ("http2: on", True),
        ("http2: false", False),
        ("http2: no", False),
        ("http2: ' Off '", False),
        ("http2: 'ON'", True),
        ("{}", True),
    ],
)
def test_http2_setting_reads_yaml_switches(given: str, http2: bool) -> None:
    assert config_from_mapping({"backends": ["http://h:1"], **yaml.safe_load(given)}).http2 is http2


@pytest.mark.parametrize("given", ["maybe", "", "2", "0", "yes"])
def test_http2_setting_refuses_other_words(given: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"backends": ["http://h:1"], "http2": given})
    assert info.value.field == "http2"
    assert "write on or off" in info.value.problem


# --- https backends --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_https_backend_with_ca_file_is_verified_and_reused(start_powerlb, pki, tls_backend, http):
    backend = tls_backend()
    lb = start_powerlb(
        [backend.url],
        backend_ca_file=str(pki.ca_file),
        health_path="/health",
        health_interval="100ms",
        health_fall=1,
    )
    for _ in range(3):
        response = await http.get(lb.url + "/x")
        assert response.code == 200
        assert b'"uri": "/x"' in await response.content()
    assert backend.connections_used() == 1  # keep-alive over TLS
    await wait_for(lambda: any(r.uri == b"/health" for r in backend.requests))
    await sleep(0.3)
    assert lb.service.backends[0].healthy
    assert lb.service.health.last_result(lb.service.backends[0]) == "200"


@pytest_twisted.ensureDeferred
async def test_default_tcp_check_of_an_https_backend_completes_the_tls_handshake(
    start_powerlb, pki, tls_backend
):
    backend = tls_backend()
    lb = start_powerlb([backend.url], backend_ca_file=str(pki.ca_file), health_interval="100ms")
    checked = lb.service.backends[0]
    await wait_for(lambda: checked.checks["pass"] >= 2)
    assert checked.healthy and checked.checks["fail"] == 0
    assert lb.service.health.last_result(checked) == "connected"
    assert backend.requests == []  # a TCP check sends no request


@pytest_twisted.ensureDeferred
async def test_https_backend_not_trusted_is_502_and_health_down(start_powerlb, tls_backend, http):
    backend = tls_backend()
    lb = start_powerlb([backend.url], health_interval="200ms", health_fall=3, retries=0)
    response = await http.get(lb.url + "/x")
    body = await response.content()
    assert response.code == 502
    assert b"certificate verify failed" in body
    assert lb.service.backends[0].failures >= 1
    await wait_for(lambda: not lb.service.backends[0].healthy)
    assert lb.service.health.last_result(lb.service.backends[0]) == "TLSHandshakeFailed"
    assert backend.served() == 0


@pytest_twisted.ensureDeferred
async def test_https_backend_with_wrong_name_is_502(start_powerlb, pki, tls_backend, http):
    backend = tls_backend(dns=["other.example"], ips=())
    lb = start_powerlb([backend.url], backend_ca_file=str(pki.ca_file), retries=0)
    response = await http.get(lb.url + "/x")
    body = await response.content()
    assert response.code == 502
    assert b"does not match" in body
    assert backend.served() == 0


@pytest_twisted.ensureDeferred
async def test_https_backend_behind_tls_listener_with_h2(start_powerlb, pki, tls_backend):
    backend = tls_backend()
    lb = start_powerlb([backend.url], listen=tls_listen(pki), backend_ca_file=str(pki.ca_file))
    protocol, (response,) = await h2_in_thread(lb.port, pki.ca_file, [(b"GET", b"/both", [], b"")])
    assert (protocol, response.status) == ("h2", 200)
    assert backend.requests[-1].header(b"x-forwarded-proto") == [b"https"]


# --- config ------------------------------------------------------------------------------------


def test_backend_ca_file_is_checked(pki: PKI, tmp_path: Path) -> None:
    base = {"backends": ["https://127.0.0.1:8443"]}
    config = config_from_mapping({**base, "backend-ca-file": str(pki.ca_file)})
    assert isinstance(config, Config)
    assert config.backend_ca_file == str(pki.ca_file)
    assert config.backends[0].scheme == "https"
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cases = [
        (str(tmp_path / "missing.pem"), "cannot read"),
        (str(tmp_path), "cannot read"),
        (str(junk), "holds no PEM certificate"),
        (str(broken), "certificate 1 in"),
    ]
    for path, problem in cases:
        with pytest.raises(ConfigError) as err:
            config_from_mapping({**base, "backend-ca-file": path})
        assert err.value.field == "backend-ca-file"
        assert problem in err.value.problem


def test_pem_certificates_finds_every_block(pki: PKI) -> None:
    key, cert = pki.issue("two", dns=["two.example"])
    bundle = b"# comment\n" + pki.ca_pem + b"\n" + cert.read_bytes() + key.read_bytes()
    assert pem_certificates(bundle) == [pki.ca_pem.strip(), cert.read_bytes().strip()]
    assert pem_certificates(key.read_bytes()) == []


def test_tls_failure_reasons() -> None:
    verify = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert tls_failure(verify) == "TLS handshake with backend failed: certificate verify failed"
    assert tls_failure(Failure(VerificationError(errors=[]))) == (
        "backend certificate does not match its host name"
    )
    assert tls_failure(Failure(ConnectionError("reset"))) is None


# --- pure HTTP/2 header handling -------------------------------------------------------------

LIMITS = Limits(Config(max_header_size=200, max_headers=5, max_url_length=50, max_body=1000))
BASE = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"h")]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (BASE, None),
        ([(b":method", b"GET"), (b":path", b"/"), (b"host", b"h")], None),
        ([(b":method", b"CONNECT"), (b":authority", b"h:443")], 400),
        ([(b":method", b"GET"), (b":path", b"/")], 400),
        ([*BASE[:1], (b":path", b"/" + b"a" * 50), *BASE[2:]], 414),
        ([*BASE, *[(b"x", b"1")] * 6], 431),
        ([*BASE, (b"x", b"1" * 300)], 431),
        ([*BASE, (b"content-length", b"1001")], 413),
        ([*BASE, (b"content-length", b"1000")], None),
        ([*BASE, (b"content-length", b"-1")], 400),
    ],
)
def test_request_problem(headers: List[Tuple[bytes, bytes]], expected: Optional[int]) -> None:
    problem = request_problem(headers, LIMITS)
    assert (problem and problem[0]) == expected


_names = st.sampled_from([b"accept", b"x-a", b"cookie", b"user-agent"])
_fields = st.lists(st.tuples(_names, st.binary(max_size=60)), max_size=10)


@given(_fields)
def test_request_problem_counts_fields_and_bytes_like_http11(fields: List[Tuple[bytes, bytes]]) -> None:
    problem = request_problem(BASE + fields, LIMITS)
    size = sum(len(k) + len(v) + 4 for k, v in fields)
    expected = 431 if len(fields) > LIMITS.max_headers or size > LIMITS.max_header_size else None
    assert (problem and problem[0]) == expected


@given(_fields, st.booleans())
def test_http11_headers_joins_cookies_and_frames_ended_requests(
    fields: List[Tuple[bytes, bytes]], ended: bool
) -> None:
    out = http11_headers(BASE + fields, ended)
    cookies = [v for k, v in fields if k == b"cookie"]
    assert [v for k, v in out if k == b"cookie"] == ([b"; ".join(cookies)] if cookies else [])
    others = [(k, v) for k, v in BASE + fields if k != b"cookie"]
    assert [(k, v) for k, v in out if k not in (b"cookie", b"content-length")] == others
    assert [v for k, v in out if k == b"content-length"] == ([b"0"] if ended else [])


def test_http11_headers_keeps_a_declared_length() -> None:
    headers = [*BASE, (b"content-length", b"5")]
    assert http11_headers(headers, True) == headers


# --- the upstream pool over TLS (fake reactor) ----------------------------------------------


def _tls_pool(pki: PKI) -> Any:
    backend = make_backend(9443, scheme="https")
    reactor_ = MemoryReactorClock()
    creator = BackendTLS(str(pki.ca_file)).creator_for(backend)
    return reactor_, ProxyClientFactory(backend, reactor_, tls=creator)


def test_https_pool_connects_through_tls_and_reports_handshake_failures(pki: PKI) -> None:
    reactor_, pool = _tls_pool(pki)
    sink = RecordingSink()
    pool.request(b"GET", b"/", [(b"host", b"h")], b"", sink, idempotent=True)
    host, port, factory, _, _ = reactor_.tcpClients[0]
    assert (host, port) == ("127.0.0.1", 9443)
    assert isinstance(factory, TLSMemoryBIOFactory) and factory.wrappedFactory is pool
    connection = pool.buildProtocol(None)
    connection.makeConnection(StringTransport())
    connection.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    assert isinstance(sink.failure, ConnectFailed)
    assert (sink.failure.status, sink.failure.retryable) == (502, True)
    assert sink.failure.reason == "TLS handshake with backend failed: certificate verify failed"


def test_tls_error_after_the_response_began_is_not_a_handshake_failure(pki: PKI) -> None:
    _, pool = _tls_pool(pki)
    sink = RecordingSink()
    pool.request(b"GET", b"/", [(b"host", b"h")], b"", sink, idempotent=True)
    connection = pool.buildProtocol(None)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    connection.connectionLost(Failure(SSL.Error([("SSL routines", "", "bad record mac")])))
    assert sink.status == 200
    assert sink.failure is not None and not isinstance(sink.failure, ConnectFailed)
    assert "before the response was complete" in sink.failure.reason


@pytest_twisted.ensureDeferred
async def test_h2_requests_are_logged_counted_and_get_a_secure_sticky_cookie(
    make_backends, start_powerlb, pki, tmp_path
):
    (backend,) = make_backends(1)
    backend.routes[b"/cached"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), b"c")[1]
    path = tmp_path / "access.jsonl"
    lb = start_powerlb(
        [backend],
        listen=tls_listen(pki),
        access_log=str(path),
        access_log_format="json",
        sticky_cookie="lb",
    )
    protocol, (page, miss, hit) = await h2_in_thread(
        lb.port,
        pki.ca_file,
        [(b"GET", b"/page", [], b""), (b"GET", b"/cached", [], b""), (b"GET", b"/cached", [], b"")],
    )
    assert protocol == "h2" and [r.status for r in (page, miss, hit)] == [200, 200, 200]
    cookie = page.header(b"set-cookie")
    assert cookie is not None and cookie.startswith(b"lb=") and b"; Secure" in cookie
    assert hit.header(b"x-cache") == b"HIT" and hit.header(b"set-cookie") is None
    lb.service.access_log.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["protocol"], r["target"], r["cache"], r["upstream"]) for r in records] == [
        ("HTTP/2", "/page", "MISS", backend.url[7:]),
        ("HTTP/2", "/cached", "MISS", backend.url[7:]),
        ("HTTP/2", "/cached", "HIT", None),
    ]
    responses = lb.service.stats()["responses"]
    assert responses == {backend.url: {"2xx": {"miss": 2}}, "": {"2xx": {"hit": 1}}}


@pytest_twisted.ensureDeferred
async def test_https_backend_added_through_the_api_is_verified_and_named_by_host_port(
    make_backends, start_powerlb, pki, tls_backend, http
):
    (plain,) = make_backends(1)
    secure = tls_backend()
    lb = start_powerlb(
        [plain], backend_ca_file=str(pki.ca_file), admin="tcp:0", admin_token="t", algorithm="round-robin"
    )
    auth = {"Authorization": ["Bearer t"], "Content-Type": ["application/json"]}
    added = await http.post(
        lb.admin_url + "/api/v1/backends", json.dumps({"url": secure.url}).encode(), headers=auth
    )
    assert added.code == 201
    backend_id = secure.url.partition("://")[2]
    assert (await added.json())["id"] == backend_id
    answers = [await http.get(lb.url + "/x") for _ in range(4)]
    assert [r.code for r in answers] == [200] * 4
    assert len([r for r in secure.requests if r.uri == b"/x"]) == 2  # over verified TLS
    drained = await http.patch(
        f"{lb.admin_url}/api/v1/backends/{backend_id}", b'{"state": "draining"}', headers=auth
    )
    assert (await drained.json())["state"] == "draining"
