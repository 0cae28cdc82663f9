"""DNS discovery end to end: a real powerlb whose backends come from an in-process
``twisted.names`` server on 127.0.0.1 (UDP, ephemeral port), whose records the tests change.

The backends are real (:class:`powerlb.testing.TestBackend`); a second address on the same
port is the IPv6 loopback (``::1``, an AAAA record): test traffic stays on 127.0.0.1 and ::1.
Lookups run on the real reactor with a short ``dns-min-ttl``; waits are bounded by
:func:`tests.support.inproc.wait_for`."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.names import dns, server
from twisted.web.server import NOT_DONE_YET, Request

from powerlb.config import config_from_mapping
from tests.support.dns import Zone
from tests.support.inproc import Running, wait_for

#: A lookup of a stopped server fails after this (the default, 1 s then 3 s, is for real networks).
QUERY_TIMEOUT = (0.3,)


@pytest.fixture
def dns_server() -> Iterator[Tuple[Zone, Any]]:
    """An in-process DNS server on 127.0.0.1 serving a :class:`Zone`: ``(zone, listening port)``."""
    zone = Zone()
    port = reactor.listenUDP(
        0, dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[zone])), "127.0.0.1"
    )
    yield zone, port
    if port.connected:
        port.stopListening()


def start_with_dns(start_powerlb: Any, port: Any, **settings: Any) -> Running:
    running = start_powerlb(
        [],
        dns_resolver=f"127.0.0.1:{port.getHost().port}",
        dns_min_ttl="100ms",
        dns_max_ttl="1s",
        health_path="/health",
        **settings,
    )
    running.service.discovery.query_timeout = QUERY_TIMEOUT
    return running


async def names_of(http: Any, url: str, count: int) -> List[str]:
    """Which backend answered each of ``count`` GETs of ``url`` (their X-Backend)."""
    names = []
    for _ in range(count):
        response = await http.get(url)
        await response.content()
        assert response.code == 200
        names.append(response.headers.getRawHeaders(b"x-backend")[0].decode())
    return names


def ids(running: Running) -> List[str]:
    return [backend.id for backend in running.service.backends]


@pytest_twisted.ensureDeferred
async def test_a_and_aaaa_records_add_drain_and_survive_a_dead_dns_server(
    start_powerlb: Any, make_backends: Any, dns_server: Tuple[Zone, Any], http: Any
) -> None:
    zone, port = dns_server
    one, two = make_backends(2)
    # The second backend on ::1, on the first one's port: both are web.test:PORT (A and AAAA).
    two.port.stopListening()
    two.port = reactor.listenTCP(one.port_number, two.site, interface="::1")
    zone.addresses("web.test", "127.0.0.1", ttl=0)
    running = start_with_dns(start_powerlb, port, dns=[f"web.test:{one.port_number}"])
    first, second = f"127.0.0.1:{one.port_number}", f"[::1]:{one.port_number}"
    await wait_for(lambda: ids(running) == [first])
    assert await names_of(http, running.url, 2) == ["a", "a"]

    # A second address (AAAA): health-checked first, then it takes traffic too.
    zone.addresses("web.test", "127.0.0.1", "::1", ttl=0)
    await wait_for(lambda: ids(running) == [first, second])
    assert [request.uri for request in two.requests] == [b"/health"]
    assert sorted(set(await names_of(http, running.url, 4))) == ["a", "b"]
    assert running.service.config.backends == ()  # discovered backends are not configuration

    # The first address leaves DNS: it drains (its request in flight finishes), then goes.
    held: List[Request] = []
    one.routes[b"/slow"] = lambda request: held.append(request) or NOT_DONE_YET
    slow = [http.get(running.url + "/slow") for _ in range(2)]  # round-robin: one each
    await wait_for(lambda: len(held) == 1)
    zone.addresses("web.test", "::1", ttl=0)
    backend = running.service.backends[0]
    await wait_for(lambda: backend.state == "draining")
    assert backend.in_flight == 1 and ids(running) == [first, second]
    held[0].write(b"slow")
    held[0].finish()
    responses = await defer.gatherResults(slow)
    assert sorted(response.code for response in responses) == [200, 200]
    for response in responses:
        await response.content()
    await wait_for(lambda: ids(running) == [second])
    assert await names_of(http, running.url, 3) == ["b", "b", "b"]

    # The DNS server goes away: lookups fail, the last known set stays.
    await port.stopListening()
    discovery = running.service.discovery
    await wait_for(lambda: discovery.status()[0]["failures"] >= 2)
    assert ids(running) == [second]
    assert await names_of(http, running.url, 2) == ["b", "b"]


@pytest_twisted.ensureDeferred
async def test_srv_records_give_ports_and_weights(
    start_powerlb: Any, make_backends: Any, dns_server: Tuple[Zone, Any], http: Any
) -> None:
    zone, port = dns_server
    a, b = make_backends(2)
    name = "_http._tcp.web.service.consul"
    zone.addresses("a.node.consul", "127.0.0.1")
    zone.addresses("b.node.consul", "127.0.0.1")
    zone.services(name, (1, 3, a.port_number, "a.node.consul"), (1, 1, b.port_number, "b.node.consul"), ttl=0)
    running = start_with_dns(start_powerlb, port, srv=name, algorithm="weighted-round-robin")
    await wait_for(lambda: len(running.service.backends) == 2)
    assert Counter(await names_of(http, running.url, 8)) == {"a": 6, "b": 2}

    # New weights in DNS are new weights in powerlb, on the same backends.
    zone.services(name, (1, 1, a.port_number, "a.node.consul"), (1, 1, b.port_number, "b.node.consul"), ttl=0)
    await wait_for(lambda: [backend.weight for backend in running.service.backends] == [1, 1])
    assert Counter(await names_of(http, running.url, 4)) == {"a": 2, "b": 2}

    # A reload (SIGHUP) of the same configuration leaves the discovered backends alone.
    before = list(running.service.backends)
    mapping = {
        "listen": "tcp:0:interface=127.0.0.1",
        "srv": name,
        "algorithm": "weighted-round-robin",
        "health-path": "/health",
    }
    running.service.reload(config_from_mapping(mapping))
    assert set(running.service.backends) == set(before)

    # A reload that names a discovered backend makes it static: leaving DNS no longer drains it.
    discovery = running.service.discovery
    running.service.reload(config_from_mapping({**mapping, "backends": [a.url + ",weight=2"]}))
    assert set(running.service.backends) == set(before)
    assert [spec.url for spec in running.service.config.backends] == [a.url]
    now_static, found = sorted(before, key=lambda backend: backend.url != a.url)
    assert not discovery.owns(now_static) and now_static.weight == 2 and discovery.owns(found)
    zone.services(name, (1, 1, b.port_number, "b.node.consul"), ttl=0)
    await wait_for(lambda: discovery.status()[0]["addresses"] == [found.id])
    assert now_static.state == "enabled" and set(running.service.backends) == set(before)


@pytest_twisted.ensureDeferred
async def test_static_backends_stay_beside_discovered_ones(
    start_powerlb: Any, make_backends: Any, dns_server: Tuple[Zone, Any], http: Any
) -> None:
    zone, port = dns_server
    static, found = make_backends(2)
    zone.addresses("web.test", "127.0.0.1", ttl=0)
    running = start_powerlb(
        [static], dns=[f"web.test:{found.port_number}"], dns_resolver=f"127.0.0.1:{port.getHost().port}"
    )
    await wait_for(lambda: len(running.service.backends) == 2)
    assert sorted(set(await names_of(http, running.url, 4))) == ["a", "b"]
    assert [spec.url for spec in running.service.config.backends] == [static.url]


@pytest_twisted.ensureDeferred
async def test_a_name_the_server_does_not_know_is_nxdomain(dns_server: Tuple[Zone, Any]) -> None:
    """The fixture answers like a real server: an unknown name is NXDOMAIN (the resolver's DNSNameError)."""
    from twisted.names.client import Resolver
    from twisted.names.error import DNSNameError

    _, port = dns_server
    resolver = Resolver(servers=[("127.0.0.1", port.getHost().port)])
    with pytest.raises(DNSNameError):
        await resolver.lookupAddress("nowhere.test", timeout=(2,))


@pytest_twisted.ensureDeferred
async def test_each_pool_discovers_its_own_backends(
    start_powerlb: Any, make_backends: Any, dns_server: Tuple[Zone, Any], http: Any
) -> None:
    """Two pools, one with an A name and one with an SRV name: each pool gets only the backends
    its own name stands for, and the routes send /a to one and /b to the other."""
    zone, port = dns_server
    a1, a2, b1 = make_backends(3)
    # a1 and a2 on one port (127.0.0.1 and ::1: web.test's A and AAAA records).
    a2.port.stopListening()
    a2.port = reactor.listenTCP(a1.port_number, a2.site, interface="::1")
    zone.addresses("web.test", "127.0.0.1", "::1", ttl=0)
    name = "_http._tcp.api.service.consul"
    zone.addresses("c.node.consul", "127.0.0.1")
    zone.services(name, (1, 1, b1.port_number, "c.node.consul"), ttl=0)
    running = start_powerlb(
        [],
        dns_resolver=f"127.0.0.1:{port.getHost().port}",  # top level: both pools'
        dns_min_ttl="100ms",
        dns_max_ttl="1s",
        pools={"web": {"dns": [f"web.test:{a1.port_number}"]}, "api": {"srv": name}},
        routes=[{"path-prefix": "/b", "pool": "api"}, {"pool": "web"}],
    )
    web, api = running.service.pools["web"], running.service.pools["api"]
    web_ids = [f"127.0.0.1:{a1.port_number}", f"[::1]:{a1.port_number}"]
    await wait_for(lambda: [b.id for b in web.backends] == web_ids)
    await wait_for(lambda: [b.id for b in api.backends] == [f"127.0.0.1:{b1.port_number}"])
    assert sorted(set(await names_of(http, running.url + "/a", 4))) == ["a", "b"]
    assert await names_of(http, running.url + "/b", 3) == ["c", "c", "c"]
    assert [request.uri for request in b1.requests] == [b"/b"] * 3  # no /a reached the api pool
    assert {request.uri for request in a1.requests + a2.requests} == {b"/a"}  # nor /b the web pool

    # A change to one pool's name changes that pool only.
    zone.addresses("web.test", "::1", ttl=0)
    await wait_for(lambda: [b.id for b in web.backends] == web_ids[1:])
    assert [b.id for b in api.backends] == [f"127.0.0.1:{b1.port_number}"]
    assert await names_of(http, running.url + "/a", 2) == ["b", "b"]
    assert await names_of(http, running.url + "/b", 2) == ["c", "c"]
