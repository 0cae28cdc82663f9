"""DNS discovery: the pure decisions (tables and hypothesis) and DnsDiscovery on a task.Clock.

:class:`tests.support.dns.Zone` is the resolver here; in test_discovery_e2e.py it is the
authority of a real ``twisted.names`` server.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns

from powerlb.backend import Backend, BackendSpec
from powerlb.config import ConfigError, config_from_mapping, config_to_mapping
from powerlb.discovery import (
    DRAIN_POLL,
    DnsDiscovery,
    Found,
    Source,
    Target,
    Timing,
    address_found,
    after_lookup,
    make_resolver,
    merge,
    nameservers,
    reconcile,
    srv_found,
    srv_records,
)
from powerlb.tap import Options
from powerlb.values import format_host_port, parse_backend, parse_dns_resolver, parse_dns_target
from tests.support.dns import Zone


class Control:
    """The live backends, as ``PowerLBService`` keeps them (add, remove, re-weight)."""

    def __init__(self, *static: str) -> None:
        self.backends = [Backend(parse_backend(url)) for url in static]

    def add_backend(self, spec: BackendSpec) -> Backend:
        backend = Backend(spec)
        self.backends.append(backend)
        return backend

    def remove_backend(self, backend: Backend) -> None:
        self.backends.remove(backend)

    def set_backend_weight(self, backend: Backend, weight: int) -> None:
        backend.set_weight(weight)

    def by_id(self) -> Dict[str, Backend]:
        return {backend.id: backend for backend in self.backends}


class Probes:
    """Health probes that pass (200) unless a test sets another status or holds them."""

    def __init__(self) -> None:
        self.status: Dict[str, int] = {}
        self.held: Dict[str, defer.Deferred] = {}
        self.probed: List[str] = []

    def __call__(self, backend: Backend) -> defer.Deferred:
        self.probed.append(backend.id)
        if backend.id in self.held:
            return self.held[backend.id]
        return defer.succeed(self.status.get(backend.id, 200))


TIMING = Timing(min_ttl=5.0, max_ttl=60.0)


def start(
    sources: Sequence[Source], zone: Zone, control: Optional[Control] = None
) -> Tuple[DnsDiscovery, Clock, Control, Probes]:
    clock, probes = Clock(), Probes()
    control = control or Control()
    discovery = DnsDiscovery(
        sources,
        zone,
        clock,
        control,
        probes,
        TIMING,
        health_interval=2.0,
        health_timeout=1.0,
        drain_timeout=30.0,
    )
    discovery.startService()
    return discovery, clock, control, probes


WEB: Source = ("dns", ("web.internal", 8080))
SRV: Source = ("srv", "_http._tcp.web.service.consul")


# --- pure: values and settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web.internal:8080", ("web.internal", 8080)),
        ("WEB.Internal.:80", ("web.internal", 80)),
        ("_http._tcp.x.consul:1", ("_http._tcp.x.consul", 1)),
    ],
)
def test_dns_target_parses(text: str, expected: Tuple[str, int]) -> None:
    assert parse_dns_target(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("web.internal", "no port"),
        ("web.internal:0", "port '0'"),
        ("web.internal:65536", "port '65536'"),
        ("bad name:80", "not a DNS name"),
        ("-web:80", "not a DNS name"),
        ("[::1]:80", "not a DNS name"),
    ],
)
def test_bad_dns_target_says_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_dns_target(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8600", ("127.0.0.1", 8600)),
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("[::1]:8600", ("::1", 8600)),
        ("::1", ("::1", 53)),
    ],
)
def test_dns_resolver_parses(text: str, expected: Tuple[str, int]) -> None:
    assert parse_dns_resolver(text) == expected


@pytest.mark.parametrize("text", ["localhost:53", "[::1", "1.2.3.4:x", "1.2.3.4:70000", ""])
def test_bad_dns_resolver_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 127\.0\.0\.1:8600"):
        parse_dns_resolver(text)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_resolver_address_round_trips(address: Any, port: int) -> None:
    parsed = (str(address), port)
    assert parse_dns_resolver(format_host_port(parsed)) == parsed


@given(
    st.from_regex(
        r"[a-z0-9_]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9_]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True
    )
)
def test_dns_target_round_trips(name: str) -> None:
    assert parse_dns_target(format_host_port((name, 8080))) == (name, 8080)


def test_discovery_alone_needs_no_static_backend_and_is_written_back() -> None:
    config = config_from_mapping(
        {
            "dns": ["web.internal:8080"],
            "srv": "_http._tcp.web.service.consul",
            "dns-resolver": "127.0.0.1:8600",
        }
    )
    assert config.backends == ()
    written = config_to_mapping(config)
    assert written["dns"] == ["web.internal:8080"]
    assert written["dns-resolver"] == "127.0.0.1:8600"
    assert config_from_mapping(written) == config


def test_the_command_line_takes_several_names_and_shows_the_settings_in_help() -> None:
    options = Options()
    options.parseOptions(["--dns", "web.internal:8080", "--dns", "api.internal:9000", "--dns-min-ttl", "1s"])
    assert options.config is not None
    assert options.config.dns == (("web.internal", 8080), ("api.internal", 9000))
    assert options.config.dns_min_ttl == 1.0
    text = "".join(str(Options()).split())
    for option in ("--dns=", "--srv=", "--dns-resolver=", "--dns-min-ttl=", "--dns-max-ttl="):
        assert option in text


def test_without_backends_or_names_the_error_names_both() -> None:
    with pytest.raises(ConfigError, match=r"--backend.*--dns, --srv"):
        config_from_mapping({})


def test_min_ttl_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"dns-min-ttl: 120s is more than dns-max-ttl \(60s\)"):
        config_from_mapping({"dns": ["web.internal:80"], "dns-min-ttl": "2m", "dns-max-ttl": "1m"})


def test_the_resolver_asks_the_given_server_or_those_of_resolv_conf(tmp_path: Any) -> None:
    clock = Clock()
    assert make_resolver(("127.0.0.1", 8600), clock).servers == [("127.0.0.1", 8600)]
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 10.0.0.2\n")
    assert make_resolver(None, clock, str(resolv_conf)).servers == [("10.0.0.2", 53)]
    assert make_resolver(None, clock, str(tmp_path / "missing")).servers == [("127.0.0.1", 53)]
    assert clock.getDelayedCalls() == []  # nothing re-reads the file behind the service's back


def test_nameservers_of_resolv_conf() -> None:
    text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:2\n"
    assert nameservers(text) == [("10.0.0.2", 53), ("fe80::1", 53)]
    assert nameservers("search x\n") == [("127.0.0.1", 53)]


# --- pure: records to targets ---------------------------------------------------------------


def _a(name: str, host: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(host))


def _srv(
    name: str, priority: int, weight: int, port: int, target: Union[str, bytes], ttl: int
) -> dns.RRHeader:
    return dns.RRHeader(name, dns.SRV, ttl=ttl, payload=dns.Record_SRV(priority, weight, port, target))


def test_address_records_become_targets_with_the_smallest_ttl() -> None:
    records = [
        dns.RRHeader("web", dns.CNAME, ttl=300, payload=dns.Record_CNAME("real")),
        _a("real", "10.0.0.1", 30),
        _a("real", "10.0.0.2", 20),
        dns.RRHeader("real", dns.AAAA, ttl=40, payload=dns.Record_AAAA("fd00::1")),
    ]
    found = address_found(records, 8080)
    assert found == Found(
        frozenset({Target("10.0.0.1", 8080), Target("10.0.0.2", 8080), Target("fd00::1", 8080)}), 20
    )
    assert Target("fd00::1", 8080).spec().url == "http://[fd00::1]:8080"


def test_srv_records_become_weighted_targets_lower_priority_first() -> None:
    name = "_http._tcp.web"
    records = [
        _srv(name, 10, 3, 8001, "a.node", 60),
        _srv(name, 10, 0, 8002, "b.node", 60),
        _srv(name, 20, 5, 8003, "c.node", 60),
        _srv(name, 10, 1, 8004, "gone.node", 60),  # no address known: no target
        _srv(name, 10, 1, 80, b"", 60),  # target ".": no service here
    ]
    known = {"a.node": [("10.0.0.1", 30.0)], "b.node": [("10.0.0.2", 90.0)], "c.node": [("10.0.0.3", 90.0)]}
    found = srv_found(srv_records(records), known)
    assert found == Found(
        frozenset(
            {
                Target("10.0.0.1", 8001, weight=3),
                Target("10.0.0.2", 8002, weight=1),
                Target("10.0.0.3", 8003, weight=5, backup=True),
            }
        ),
        30,
    )


def test_an_address_two_srv_records_give_counts_once_from_the_best() -> None:
    records = [_srv("s", 20, 9, 80, "x", 5), _srv("s", 10, 1, 80, "x", 5), _srv("s", 10, 4, 80, "x", 5)]
    found = srv_found(srv_records(records), {"x": [("10.0.0.1", 5.0)]})
    assert found.targets == frozenset({Target("10.0.0.1", 80, weight=4)})


# --- pure: what a lookup leaves known, and when to look again --------------------------------

ONE = Target("10.0.0.1", 80)
TWO = Target("10.0.0.2", 80)


@pytest.mark.parametrize(
    ("known", "outcome", "failures", "expected"),
    [
        ({}, Found(frozenset({ONE}), 30), 0, ({ONE.id: ONE}, 0, 30)),
        ({ONE.id: ONE}, Found(frozenset({TWO}), 1), 3, ({TWO.id: TWO}, 0, 5)),  # TTL below the floor
        ({}, Found(frozenset({ONE}), 3600), 0, ({ONE.id: ONE}, 0, 60)),  # above the cap
        ({ONE.id: ONE}, None, 0, ({ONE.id: ONE}, 1, 5)),  # failed: kept, retried after the floor
        ({ONE.id: ONE}, None, 1, ({ONE.id: ONE}, 2, 10)),  # and backs off
        ({ONE.id: ONE}, None, 3, ({ONE.id: ONE}, 4, 40)),
        ({ONE.id: ONE}, None, 9, ({ONE.id: ONE}, 10, 60)),  # up to the cap
        ({ONE.id: ONE}, Found(frozenset(), 30), 0, ({ONE.id: ONE}, 1, 5)),  # nothing found: as a failure
    ],
)
def test_after_lookup(
    known: Dict[str, Target], outcome: Optional[Found], failures: int, expected: Tuple[Any, int, float]
) -> None:
    assert after_lookup(known, outcome, failures, TIMING) == expected


targets = st.builds(
    Target,
    st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"]),
    st.sampled_from([80, 8080]),
    st.integers(1, 5),
    st.booleans(),
)
target_maps = st.lists(targets).map(lambda ts: {t.id: t for t in ts})


@given(
    target_maps,
    st.one_of(st.none(), st.builds(Found, st.frozensets(targets), st.floats(0, 10**6))),
    st.integers(0, 100),
    st.floats(0.1, 100),
    st.floats(1, 1000),
)
def test_after_lookup_keeps_on_failure_and_stays_in_bounds(
    known: Dict[str, Target], outcome: Optional[Found], failures: int, low: float, span: float
) -> None:
    timing = Timing(low, low + span)
    new, new_failures, delay = after_lookup(known, outcome, failures, timing)
    assert timing.min_ttl <= delay <= timing.max_ttl
    if outcome is None or not outcome.targets:
        assert (new, new_failures) == (known, failures + 1)
    else:
        assert new_failures == 0
        assert set(new) == {target.id for target in outcome.targets}


def test_merge_keeps_the_first_name_s_view() -> None:
    heavy = Target(ONE.host, ONE.port, weight=7)
    assert merge([{ONE.id: ONE}, {ONE.id: heavy, TWO.id: TWO}]) == {ONE.id: ONE, TWO.id: TWO}


# --- pure: what to change ---------------------------------------------------------------------

THREE = Target("10.0.0.3", 80)


@pytest.mark.parametrize(
    ("wanted", "owned", "draining", "checking", "taken", "expected"),
    [
        ([ONE], [], [], [], [], dict(check=(ONE.id,))),
        ([ONE], [], [], [ONE.id], [], {}),  # already being checked
        ([], [], [], [ONE.id], [], dict(forget=(ONE.id,))),  # vanished before it passed
        ([TWO], [ONE], [], [], [], dict(check=(TWO.id,), drain=(ONE.id,))),
        ([ONE], [ONE], [ONE.id], [], [], dict(undrain=(ONE.id,))),  # back while draining
        ([], [ONE], [ONE.id], [], [], {}),  # still draining
        (
            [Target(ONE.host, 80, weight=3)],
            [ONE],
            [],
            [],
            [],
            dict(reweight=(Target(ONE.host, 80, weight=3),)),
        ),
        ([ONE, THREE], [], [], [], [THREE.id], dict(check=(ONE.id,))),  # a static backend stays static
    ],
)
def test_reconcile(
    wanted: List[Target],
    owned: List[Target],
    draining: List[str],
    checking: List[str],
    taken: List[str],
    expected: Dict[str, Any],
) -> None:
    changes = reconcile(
        {t.id: t for t in wanted}, {t.id: t for t in owned}, set(draining), set(checking), set(taken)
    )
    assert changes == type(changes)(**expected)


@given(target_maps, target_maps, st.data())
def test_reconcile_leads_to_what_dns_says(
    wanted: Dict[str, Target], owned: Dict[str, Target], data: Any
) -> None:
    ids = sorted({*wanted, *owned, "10.9.9.9:80"})
    draining = data.draw(st.sets(st.sampled_from(sorted(owned)))) if owned else set()
    checking = data.draw(st.sets(st.sampled_from(ids))) - set(owned)
    taken = data.draw(st.sets(st.sampled_from(ids))) - set(owned) - checking
    changes = reconcile(wanted, owned, draining, checking, taken)
    # Apply them: every wanted target not taken is then owned (as wanted) and not draining, or checked.
    checking = (checking - set(changes.forget)) | set(changes.check)
    draining = (draining - set(changes.undrain)) | set(changes.drain)
    owned = {**owned, **{t.id: t for t in changes.reweight}}
    expected = set(wanted) - taken
    assert (set(owned) - draining) | checking == expected
    assert not set(owned) & checking
    assert all(owned[i] == wanted[i] for i in set(owned) - draining)
    assert not set(changes.check) & taken


# --- DnsDiscovery on a task.Clock -------------------------------------------------------------


def test_addresses_are_checked_added_and_followed_at_their_ttl() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", ttl=10)
    discovery, clock, control, probes = start([WEB], zone)
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    assert probes.probed == ["10.0.0.1:8080"]
    assert discovery.owns(control.backends[0])
    zone.addresses("web.internal", "10.0.0.1", "fd00::2", ttl=10)
    clock.advance(9)
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    clock.advance(1)
    assert list(control.by_id()) == ["10.0.0.1:8080", "[fd00::2]:8080"]
    assert control.backends[1].url == "http://[fd00::2]:8080"
    discovery.stopService()
    assert clock.getDelayedCalls() == []


def test_a_new_address_takes_traffic_only_once_a_probe_passes() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1")
    clock, probes, control = Clock(), Probes(), Control()
    probes.status["10.0.0.1:8080"] = 503
    discovery = DnsDiscovery([WEB], zone, clock, control, probes, TIMING, 2.0, 1.0, 30.0)
    discovery.startService()
    assert control.backends == []
    clock.advance(2)  # probed again after health-interval
    assert probes.probed == ["10.0.0.1:8080"] * 2 and control.backends == []
    probes.status.clear()
    clock.advance(2)
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    discovery.stopService()


def test_a_probe_that_hangs_times_out_and_an_address_that_leaves_unchecked_is_forgotten() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", ttl=5)
    clock, probes, control = Clock(), Probes(), Control()
    probes.held["10.0.0.1:8080"] = defer.Deferred()
    discovery = DnsDiscovery([WEB], zone, clock, control, probes, TIMING, 2.0, 1.0, 30.0)
    discovery.startService()
    clock.advance(1)  # health-timeout: failed, next probe in 2 s
    assert probes.held["10.0.0.1:8080"].called
    zone.addresses("web.internal", "10.0.0.2", ttl=5)
    probes.held.clear()
    clock.advance(4)  # the next lookup: 10.0.0.1 is gone before it passed
    clock.advance(2)
    assert list(control.by_id()) == ["10.0.0.2:8080"]
    assert probes.probed.count("10.0.0.1:8080") == 2
    discovery.stopService()
    assert clock.getDelayedCalls() == []


def test_a_vanished_address_drains_then_goes_and_may_come_back_while_draining() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", "10.0.0.2", ttl=5)
    discovery, clock, control, _ = start([WEB], zone)
    one = control.by_id()["10.0.0.1:8080"]
    one.in_flight = 1
    zone.addresses("web.internal", "10.0.0.2", ttl=5)
    clock.advance(5)
    assert one.state == "draining" and one in control.backends
    zone.addresses("web.internal", "10.0.0.1", "10.0.0.2", ttl=5)
    clock.advance(5)
    assert one.state == "enabled"
    zone.addresses("web.internal", "10.0.0.2", ttl=5)
    clock.advance(5)
    clock.advance(DRAIN_POLL * 4)
    assert one in control.backends  # a request still in flight
    one.in_flight = 0
    clock.advance(DRAIN_POLL)
    assert list(control.by_id()) == ["10.0.0.2:8080"]
    assert not discovery.owns(one)
    discovery.stopService()


def test_draining_ends_at_the_drain_timeout() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", ttl=60)
    _, clock, control, _ = start([WEB], zone)
    control.backends[0].in_flight = 5
    zone.addresses("web.internal", "10.0.0.2", ttl=60)
    clock.advance(60)
    clock.pump([DRAIN_POLL] * int(30 / DRAIN_POLL))
    assert list(control.by_id()) == ["10.0.0.2:8080"]


def test_failed_lookups_keep_the_last_set_and_back_off() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", ttl=5)
    discovery, clock, control, _ = start([WEB], zone)
    zone.failing = True
    times = []
    for _ in range(40):
        before = len(zone.queries)
        clock.advance(1)
        if len(zone.queries) > before:
            times.append(clock.seconds())
    assert times == [5, 10, 20, 40]  # a lookup (A and AAAA) 5 s after the last, then 5, 10, 20 s later
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    zone.remove("web.internal")  # NXDOMAIN: nothing found, the last set is kept too
    zone.failing = False
    clock.advance(40)
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    zone.addresses("web.internal", "10.0.0.2", ttl=5)
    clock.advance(60)
    assert control.by_id()["10.0.0.1:8080"].state == "draining"
    assert "10.0.0.2:8080" in control.by_id()
    discovery.stopService()


def test_static_backends_stay_and_are_not_owned() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", "10.0.0.2", ttl=5)
    control = Control("http://10.0.0.1:8080")
    static = control.backends[0]
    discovery, clock, control, probes = start([WEB], zone, control)
    assert list(control.by_id()) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert probes.probed == ["10.0.0.2:8080"]
    assert not discovery.owns(static)
    zone.addresses("web.internal", "10.0.0.2", ttl=5)
    clock.advance(5)
    clock.advance(DRAIN_POLL)
    assert static.state == "enabled" and static in control.backends
    discovery.stopService()


def test_srv_weights_priorities_and_reweighting() -> None:
    zone = Zone()
    name = SRV[1]
    assert isinstance(name, str)
    zone.addresses("a.node.consul", "10.0.0.1")
    zone.addresses("b.node.consul", "10.0.0.2")
    zone.services(name, (1, 3, 8001, "a.node.consul"), (2, 1, 8002, "b.node.consul"), ttl=5)
    discovery, clock, control, _ = start([SRV], zone)
    shown = {b.id: (b.weight, b.backup) for b in control.backends}
    assert shown == {"10.0.0.1:8001": (3, False), "10.0.0.2:8002": (1, True)}
    zone.services(name, (1, 5, 8001, "a.node.consul"), (1, 1, 8002, "b.node.consul"), ttl=5)
    clock.advance(5)
    shown = {b.id: (b.weight, b.backup) for b in control.backends}
    assert shown == {"10.0.0.1:8001": (5, False), "10.0.0.2:8002": (1, False)}
    discovery.stopService()


def test_srv_targets_without_additional_addresses_are_looked_up() -> None:
    zone = Zone()
    zone.additional = False
    zone.addresses("a.node.consul", "10.0.0.1")
    zone.services("_web._tcp.x", (1, 1, 9000, "a.node.consul"))
    discovery, _, control, _ = start([("srv", "_web._tcp.x")], zone)
    assert list(control.by_id()) == ["10.0.0.1:9000"]
    assert ("a.node.consul", dns.A) in zone.queries
    discovery.stopService()


def test_two_names_share_an_address_once_and_an_api_removal_is_noticed() -> None:
    zone = Zone()
    zone.addresses("web.internal", "10.0.0.1", ttl=5)
    zone.addresses("api.internal", "10.0.0.1", ttl=5)
    discovery, clock, control, probes = start([WEB, ("dns", ("api.internal", 8080))], zone)
    assert list(control.by_id()) == ["10.0.0.1:8080"]
    control.remove_backend(control.backends[0])  # DELETE through the runtime API
    clock.advance(5)
    # DNS still names it: checked and added again.
    assert list(control.by_id()) == ["10.0.0.1:8080"] and probes.probed.count("10.0.0.1:8080") == 2
    discovery.stopService()


@given(
    st.lists(
        st.sets(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"])), min_size=1, max_size=6
    )
)
def test_the_live_backends_follow_any_sequence_of_answers(answers: List[set]) -> None:
    zone = Zone()
    static = "10.0.0.3:8080"
    discovery, clock, control, _ = start([WEB], zone, Control(f"http://{static}"))
    last: set = set()
    for hosts in answers:
        zone.addresses("web.internal", *sorted(hosts), ttl=5)
        clock.advance(TIMING.max_ttl)  # at least one lookup, whatever the back-off
        clock.advance(DRAIN_POLL)  # nothing is in flight: vanished ones are removed
        last = hosts or last  # an answer without addresses keeps the last set
        expected = {format_host_port((host, 8080)) for host in last} | {static}
        assert set(control.by_id()) == expected
        assert all(backend.state == "enabled" for backend in control.backends)
        assert [discovery.owns(backend) for backend in control.backends if backend.id == static] == [False]
    discovery.stopService()
    assert clock.getDelayedCalls() == []
