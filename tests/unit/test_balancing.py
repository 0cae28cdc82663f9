"""Tests for powerlb.balancing: exact pick sequences, distributions and properties."""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction
from typing import List, NamedTuple, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from powerlb.backend import BACKEND_STATES, WEIGHT_SCALE, Backend, BackendSpec
from powerlb.balancing import (
    ALGORITHMS,
    ConsistentHash,
    IBalancer,
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    SmoothWeightedRoundRobin,
    StickySessions,
    WithBackups,
    _eligible,
    make_balancer,
)
from powerlb.hashkey import client_key, key_function, parse_hash_key, uri_key
from powerlb.health import SlowStart, ramp_weight
from powerlb.sticky import StickyCookie, backend_id
from tests.support.backends import make_backend

NAMES = "abcdefghij"


def make_backends(*weights: int, backups: str = "") -> List[Backend]:
    """Backends named a, b, c, ... (their host) with the given weights; ``backups`` names the backups."""
    return [
        make_backend(80, NAMES[i], weight, backup=NAMES[i] in backups) for i, weight in enumerate(weights)
    ]


class Routed(NamedTuple):
    """A client request as balancers see it."""

    target: bytes
    headers: List[Tuple[bytes, bytes]]
    client_host: bytes


def req(client_host: bytes, target: bytes = b"/", headers: Sequence[Tuple[bytes, bytes]] = ()) -> Routed:
    """A request from ``client_host``."""
    return Routed(target, list(headers), client_host)


def picks(balancer: IBalancer, count: int, key: bytes = b"") -> str:
    """The hosts of ``count`` consecutive picks, as one string ("-" for None)."""
    out = []
    for _ in range(count):
        backend = balancer.pick(req(key))
        out.append("-" if backend is None else backend.host)
    return "".join(out)


ALL_NAMES = sorted(ALGORITHMS)


def build(name: str, backends: Sequence[Backend]) -> IBalancer:
    return make_balancer(name, backends, rng=random.Random(7))


# --- common contract -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_provides_interface(name: str) -> None:
    assert verifyObject(IBalancer, build(name, make_backends(1, 2)))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_empty_gives_none(name: str) -> None:
    assert build(name, []).pick(req(b"10.0.0.1")) is None


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_unhealthy_gives_none(name: str) -> None:
    backends = make_backends(1, 3, 2)
    for backend in backends:
        backend.healthy = False
    assert build(name, backends).pick(req(b"10.0.0.1")) is None


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_excluded_gives_none(name: str) -> None:
    backends = make_backends(1, 3, 2)
    assert build(name, backends).pick(req(b"10.0.0.1"), exclude=backends) is None


@pytest.mark.parametrize("name", ALL_NAMES)
def test_never_picks_unhealthy_or_excluded(name: str) -> None:
    a, b, c, d = make_backends(2, 1, 3, 1)
    b.healthy = False
    balancer = build(name, [a, b, c, d])
    seen = {balancer.pick(req(f"10.0.0.{i}".encode()), exclude=(c,)) for i in range(200)}
    assert seen == {a, d}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_never_picks_ejected(name: str) -> None:
    a, b, c = make_backends(2, 1, 3)
    b.ejected = True
    balancer = build(name, [a, b, c])
    assert {balancer.pick(req(f"10.0.0.{i}".encode())) for i in range(200)} == {a, c}
    a.ejected = c.ejected = True
    assert balancer.pick(req(b"10.0.0.1")) is None
    b.ejected = False
    assert balancer.pick(req(b"10.0.0.1")) is b


def test_eligible_honours_draining_and_disabled() -> None:
    (a,) = make_backends(1)
    assert _eligible(a, ())
    a.draining = True
    assert not _eligible(a, ())
    a.draining = False
    for flag in ("healthy", "ejected", "disabled"):
        setattr(a, flag, not getattr(a, flag))
        assert not _eligible(a, ())
        setattr(a, flag, not getattr(a, flag))
    assert _eligible(a, ()) and not _eligible(a, (a,))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_never_picks_draining_and_undrain_brings_it_back(name: str) -> None:
    a, b, c = make_backends(2, 1, 3)
    b.draining = True
    balancer = build(name, [a, b, c])
    assert {balancer.pick(req(f"10.0.0.{i}".encode())) for i in range(200)} == {a, c}
    a.draining = c.draining = True
    assert balancer.pick(req(b"10.0.0.1")) is None
    b.draining = False
    assert balancer.pick(req(b"10.0.0.1")) is b


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backups_take_over_while_every_primary_drains(name: str) -> None:
    a, b, c = make_backends(1, 1, 1, backups="c")
    a.draining = b.draining = True
    balancer = build(name, [a, b, c])
    assert balancer.pick(req(b"10.0.0.1")) is c
    b.draining = False
    assert balancer.pick(req(b"10.0.0.1")) is b


@pytest.mark.parametrize("name", ALL_NAMES)
def test_single_eligible_is_always_picked(name: str) -> None:
    a, b = make_backends(1, 5)
    balancer = build(name, [a, b])
    assert {balancer.pick(req(f"k{i}".encode()), exclude=[b]) for i in range(20)} == {a}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_set_backends_switches_to_the_new_set(name: str) -> None:
    a, b, c = make_backends(1, 1, 1)
    balancer = build(name, [a, b])
    balancer.pick(req(b"k"))
    balancer.set_backends([c])
    assert {balancer.pick(req(f"k{i}".encode())) for i in range(20)} == {c}
    balancer.set_backends([])
    assert balancer.pick(req(b"k")) is None


def test_make_balancer_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        make_balancer("fastest", [])
    assert str(info.value) == (
        "unknown algorithm 'fastest'; choose one of: consistent-hash, least-connections, "
        "random-two-choices, round-robin, source-hash, weighted-round-robin"
    )


def test_make_balancer_builds_each_class_for_both_tiers() -> None:
    backends = make_backends(1)
    expected = {
        "round-robin": RoundRobin,
        "weighted-round-robin": SmoothWeightedRoundRobin,
        "least-connections": LeastConnections,
        "random-two-choices": PowerOfTwoChoices,
        "consistent-hash": ConsistentHash,
        "source-hash": ConsistentHash,
    }
    for name, cls in expected.items():
        balancer = make_balancer(name, backends)
        assert type(balancer) is WithBackups
        assert type(balancer.primary) is cls
        assert type(balancer.backup) is cls


def test_make_balancer_passes_rng() -> None:
    backends = make_backends(1, 1, 1, 1)
    first = make_balancer("random-two-choices", backends, rng=random.Random(3))
    second = make_balancer("random-two-choices", backends, rng=random.Random(3))
    assert picks(first, 50) == picks(second, 50)


# --- round-robin ---------------------------------------------------------------------


def test_round_robin_cycles_in_order() -> None:
    assert picks(RoundRobin(make_backends(1, 9, 1)), 7) == "abcabca"


def test_round_robin_skips_unhealthy_and_resumes() -> None:
    backends = make_backends(1, 1, 1)
    balancer = RoundRobin(backends)
    assert picks(balancer, 1) == "a"
    backends[1].healthy = False
    assert picks(balancer, 3) == "cac"
    backends[1].healthy = True
    assert picks(balancer, 3) == "abc"


def test_round_robin_exclude_skips_to_next() -> None:
    a, b, c = make_backends(1, 1, 1)
    balancer = RoundRobin([a, b, c])
    assert balancer.pick(exclude=[a]) is b
    assert balancer.pick(exclude=[a]) is c
    assert balancer.pick(exclude=[a]) is b


def test_round_robin_set_backends_keeps_position() -> None:
    a, b, c, d = make_backends(1, 1, 1, 1)
    balancer = RoundRobin([a, b, c])
    assert picks(balancer, 1) == "a"
    balancer.set_backends([d, b, c])
    assert picks(balancer, 4) == "bcdb"


def test_round_robin_set_backends_restarts_when_next_is_gone() -> None:
    a, b, c, d = make_backends(1, 1, 1, 1)
    balancer = RoundRobin([a, b, c])
    assert picks(balancer, 1) == "a"
    balancer.set_backends([c, d])
    assert picks(balancer, 3) == "cdc"


@settings(max_examples=60, deadline=None)
@given(
    health=st.lists(st.booleans(), min_size=1, max_size=6).filter(any),
    warmup=st.integers(min_value=0, max_value=20),
)
def test_round_robin_window_visits_each_healthy_once(health: List[bool], warmup: int) -> None:
    backends = make_backends(*[1] * len(health))
    for backend, healthy in zip(backends, health):
        backend.healthy = healthy
    balancer = RoundRobin(backends)
    sequence = [balancer.pick() for _ in range(warmup + 3 * len(backends))]
    healthy_set = {b for b in backends if b.healthy}
    window = len(healthy_set)
    for start in range(len(sequence) - window + 1):
        assert set(sequence[start : start + window]) == healthy_set


# --- smooth weighted round-robin -----------------------------------------------------


def test_swrr_nginx_sequence() -> None:
    assert picks(SmoothWeightedRoundRobin(make_backends(5, 1, 1)), 14) == "aabacaa" * 2


def test_swrr_equal_weights_is_round_robin() -> None:
    assert picks(SmoothWeightedRoundRobin(make_backends(2, 2, 2)), 6) == "abcabc"


def test_swrr_distribution() -> None:
    counts = Counter(picks(SmoothWeightedRoundRobin(make_backends(5, 1, 1)), 7000))
    assert counts == {"a": 5000, "b": 1000, "c": 1000}


def test_swrr_backend_down_and_back_up() -> None:
    backends = make_backends(5, 1, 1)
    balancer = SmoothWeightedRoundRobin(backends)
    # currents after "aab": a=1, b=-4, c=3
    assert picks(balancer, 3) == "aab"
    backends[2].healthy = False
    # c is skipped and keeps its current weight of 3; a and b share a total of 6
    assert picks(balancer, 6) == "aaaaab"
    backends[2].healthy = True
    # a=6 b=-3 c=4 -> a; then a=4 b=-2 c=5 -> c
    assert picks(balancer, 2) == "ac"


def test_swrr_exclude_leaves_current_weight_alone() -> None:
    a, b = make_backends(1, 1)
    balancer = SmoothWeightedRoundRobin([a, b])
    assert balancer.pick(exclude=[a]) is b
    assert balancer.pick(exclude=[a]) is b
    # b went +1 -1 twice and a was not touched: both at 0, so a wins the tie, then b
    assert picks(balancer, 2) == "ab"


def test_swrr_set_backends_keeps_current_weights() -> None:
    a, b, c = make_backends(5, 1, 1)
    balancer = SmoothWeightedRoundRobin([a, b, c])
    assert picks(balancer, 2) == "aa"  # a=-4, b=2, c=2
    balancer.set_backends([b, a])
    # b=3 a=1 -> b (-3); b=-2 a=6 -> a
    assert picks(balancer, 2) == "ba"


@settings(max_examples=80, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6),
    warmup=st.integers(min_value=0, max_value=40),
)
def test_swrr_any_window_matches_weights(weights: List[int], warmup: int) -> None:
    backends = make_backends(*weights)
    balancer = SmoothWeightedRoundRobin(backends)
    total = sum(weights)
    sequence = [balancer.pick() for _ in range(warmup + 2 * total)]
    expected = {backend: backend.weight for backend in backends}
    for start in range(len(sequence) - total + 1):
        assert Counter(sequence[start : start + total]) == expected


# --- least connections ---------------------------------------------------------------


def test_least_connections_ties_rotate() -> None:
    assert picks(LeastConnections(make_backends(1, 1, 1)), 7) == "abcabca"


def test_least_connections_prefers_fewer_in_flight() -> None:
    a, b, c = make_backends(1, 1, 1)
    a.in_flight, b.in_flight, c.in_flight = 4, 1, 2
    assert LeastConnections([a, b, c]).pick() is b


def test_least_connections_relative_to_weight() -> None:
    heavy, light = make_backends(3, 1)
    heavy.in_flight, light.in_flight = 2, 1  # 2/3 < 1/1
    assert LeastConnections([heavy, light]).pick() is heavy
    assert LeastConnections([light, heavy]).pick() is heavy
    heavy.in_flight = 3  # 3/3 == 1/1: a real tie, so both take turns
    balancer = LeastConnections([heavy, light])
    assert [balancer.pick() for _ in range(4)] == [heavy, light, heavy, light]


def test_least_connections_exact_ratio_tie() -> None:
    a, b = make_backends(3, 6)
    a.in_flight, b.in_flight = 1, 2  # 1/3 == 2/6: a real tie, so they alternate
    balancer = LeastConnections([a, b])
    assert [balancer.pick() for _ in range(4)] == [a, b, a, b]


def test_least_connections_compares_without_float_rounding() -> None:
    a, b = make_backends(1, 1)
    a.in_flight, b.in_flight = 10**17 + 1, 10**17  # equal as floats, not as integers
    assert LeastConnections([a, b]).pick() is b


def test_least_connections_tie_rotation_is_fair_around_a_busy_backend() -> None:
    a, b, c = make_backends(1, 1, 1)
    c.in_flight = 1
    assert picks(LeastConnections([a, b, c]), 6) == "ababab"


def test_least_connections_follows_in_flight() -> None:
    backends = make_backends(1, 1)
    balancer = LeastConnections(backends)
    for _ in range(10):
        chosen = balancer.pick()
        assert chosen is not None
        chosen.in_flight += 1
    assert [b.in_flight for b in backends] == [5, 5]


def test_least_connections_exclude() -> None:
    a, b = make_backends(1, 1)
    b.in_flight = 5
    assert LeastConnections([a, b]).pick(exclude={a}) is b


# --- power of two choices ------------------------------------------------------------


def test_p2c_takes_less_loaded_of_the_two() -> None:
    a, b = make_backends(1, 1)
    a.in_flight = 3
    balancer = PowerOfTwoChoices([a, b], rng=random.Random(1))
    assert {balancer.pick() for _ in range(50)} == {b}


def test_p2c_compares_relative_to_weight() -> None:
    heavy, light = make_backends(3, 1)
    heavy.in_flight, light.in_flight = 2, 1
    balancer = PowerOfTwoChoices([light, heavy], rng=random.Random(2))
    assert {balancer.pick() for _ in range(50)} == {heavy}


def test_p2c_never_picks_the_busiest_of_three() -> None:
    a, b, c = make_backends(1, 1, 1)
    a.in_flight, b.in_flight, c.in_flight = 1, 2, 9
    balancer = PowerOfTwoChoices([a, b, c], rng=random.Random(5))
    counts = Counter(balancer.pick() for _ in range(3000))
    assert c not in counts
    # a wins whenever it is drawn (2 of 3 pairs), b only against c
    assert 1850 < counts[a] < 2150


def test_p2c_distribution_proportional_to_weight() -> None:
    balancer = PowerOfTwoChoices(make_backends(5, 1, 1), rng=random.Random(42))
    counts = Counter(picks(balancer, 7000))
    assert 4800 < counts["a"] < 5200
    assert 850 < counts["b"] < 1150
    assert 850 < counts["c"] < 1150


def test_p2c_is_deterministic_with_seeded_rng() -> None:
    backends = make_backends(3, 2, 1, 4)
    first = picks(PowerOfTwoChoices(backends, rng=random.Random(9)), 100)
    second = picks(PowerOfTwoChoices(backends, rng=random.Random(9)), 100)
    assert first == second
    assert set(first) == set("abcd")


# --- consistent hash (alias source-hash) ---------------------------------------------


def client_keys(count: int) -> List[bytes]:
    return [f"10.{i // 250}.{i % 250}.7".encode() for i in range(count)]


def test_source_hash_is_sticky() -> None:
    balancer = ConsistentHash(make_backends(1, 1, 1))
    for key in client_keys(100):
        assert picks(balancer, 5, key) == picks(balancer, 1, key) * 5


def test_source_hash_is_stable_across_instances() -> None:
    keys = client_keys(200)
    first = ConsistentHash(make_backends(1, 2, 3))
    second = ConsistentHash(make_backends(1, 2, 3))
    hosts = [picks(first, 1, key) for key in keys]
    assert hosts == [picks(second, 1, key) for key in keys]
    assert set(hosts) == set("abc")


def test_source_hash_spreads_by_weight() -> None:
    balancer = ConsistentHash(make_backends(3, 1))
    counts = Counter(picks(balancer, 1, key) for key in client_keys(4000))
    assert 2800 < counts["a"] < 3200
    assert 800 < counts["b"] < 1200


def test_source_hash_unhealthy_only_moves_its_keys() -> None:
    backends = make_backends(1, 2, 1, 1)
    balancer = ConsistentHash(backends)
    keys = client_keys(2000)
    before = {key: balancer.pick(req(key)) for key in keys}
    backends[1].healthy = False
    after = {key: balancer.pick(req(key)) for key in keys}
    moved = {key for key in keys if before[key] is not after[key]}
    assert moved == {key for key in keys if before[key] is backends[1]}
    assert moved  # the down backend did have clients
    backends[1].healthy = True
    assert {key: balancer.pick(req(key)) for key in keys} == before


def test_source_hash_exclude_only_moves_its_keys() -> None:
    backends = make_backends(1, 1, 1)
    balancer = ConsistentHash(backends)
    for key in client_keys(500):
        home = balancer.pick(req(key))
        runner_up = balancer.pick(req(key), exclude=[home])
        assert runner_up is not None and runner_up is not home
        third = [b for b in backends if b is not home and b is not runner_up]
        assert balancer.pick(req(key), exclude=third) is home
        assert balancer.pick(req(key), exclude=[home, *third]) is runner_up


def test_source_hash_set_backends_only_moves_keys_of_removed() -> None:
    a, b, c, d = make_backends(1, 1, 1, 1)
    balancer = ConsistentHash([a, b, c])
    keys = client_keys(1500)
    before = {key: balancer.pick(req(key)) for key in keys}
    balancer.set_backends([c, a])  # b removed, order changed
    after = {key: balancer.pick(req(key)) for key in keys}
    assert {k for k in keys if before[k] is not after[k]} == {k for k in keys if before[k] is b}
    balancer.set_backends([c, a, d])  # d added: keys only move onto d
    added = {key: balancer.pick(req(key)) for key in keys}
    assert all(added[k] is after[k] or added[k] is d for k in keys)
    assert any(added[k] is d for k in keys)


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=6),
    down=st.integers(min_value=0, max_value=5),
    keys=st.lists(st.binary(max_size=16), min_size=1, max_size=30),
)
def test_source_hash_minimal_disruption_property(weights: List[int], down: int, keys: List[bytes]) -> None:
    backends = make_backends(*weights)
    victim = backends[down % len(backends)]
    balancer = ConsistentHash(backends)
    before = [balancer.pick(req(key)) for key in keys]
    victim.healthy = False
    after = [balancer.pick(req(key)) for key in keys]
    for old, new in zip(before, after):
        assert new is not victim
        assert (new is old) == (old is not victim)


# --- consistent hash: distribution, minimal disruption, bounded loads -----------------


def uri_keys(count: int) -> List[bytes]:
    return [b"/item/%d?page=%d" % (i, i % 7) for i in range(count)]


def test_consistent_hash_spreads_10k_keys_by_weight() -> None:
    backends = make_backends(1, 2, 3, 4)
    balancer = ConsistentHash(backends)
    counts = Counter(balancer.choose(key).host for key in uri_keys(10_000))
    for backend in backends:
        expected = 10_000 * backend.weight / 10
        assert abs(counts[backend.host] - expected) < 0.1 * expected, counts


@pytest.mark.parametrize("count", [5, 10])
def test_consistent_hash_moves_only_about_one_nth_when_a_backend_leaves_and_back_when_it_returns(
    count: int,
) -> None:
    backends = make_backends(*[1] * count)
    balancer = ConsistentHash(backends)
    keys = uri_keys(10_000)
    before = {key: balancer.choose(key) for key in keys}
    leaving = backends[count // 2]
    balancer.set_backends([b for b in backends if b is not leaving])
    after = {key: balancer.choose(key) for key in keys}
    moved = {key for key in keys if after[key] is not before[key]}
    assert moved == {key for key in keys if before[key] is leaving}
    assert 0.7 / count <= len(moved) / len(keys) <= 1.3 / count
    balancer.set_backends(backends)
    assert {key: balancer.choose(key) for key in keys} == before


def test_consistent_hash_routes_on_its_key_function() -> None:
    backends = make_backends(1, 1, 1, 1)
    by_uri = ConsistentHash(backends, key_of=uri_key)
    by_client = ConsistentHash(backends, key_of=client_key)
    paths = [b"/a", b"/b", b"/c", b"/d", b"/e", b"/f", b"/g", b"/h"]
    # the same path from any client goes to one backend; different paths spread
    for path in paths:
        assert len({by_uri.pick(req(b"10.0.0.%d" % i, path)) for i in range(20)}) == 1
    assert len({by_uri.pick(req(b"10.0.0.1", path)) for path in paths}) > 1
    assert by_uri.pick(req(b"10.0.0.1", b"/a")) is by_uri.choose(b"/a")
    assert by_client.pick(req(b"10.0.0.1", b"/a")) is by_client.choose(b"10.0.0.1")
    assert by_uri.pick() is by_uri.choose(b"")


def test_balance_factor_must_exceed_one() -> None:
    for factor in (1.0, 0.5):
        with pytest.raises(ValueError, match="must be more than 1"):
            ConsistentHash(make_backends(1), balance_factor=factor)


def preference(backends: Sequence[Backend], key: bytes, exclude: Sequence[Backend]) -> List[Backend]:
    """The unbounded HRW order of the eligible ``backends`` for ``key``."""
    unbounded = ConsistentHash(backends)
    order: List[Backend] = []
    while True:
        backend = unbounded.choose(key, [*exclude, *order])
        if backend is None:
            return order
        order.append(backend)


def load_bound(backend: Backend, eligible: Sequence[Backend], factor: Fraction) -> int:
    """The most requests ``backend`` may have in flight once it takes one more (the brief's formula)."""
    total = sum(b.in_flight for b in eligible)
    weights = sum(b.effective_weight for b in eligible)
    return math.ceil(factor * (total + 1) * backend.effective_weight / weights)


@settings(max_examples=300, deadline=None)
@given(
    state=st.lists(
        st.tuples(st.integers(1, 5), st.integers(0, 40), st.booleans(), st.booleans()),
        min_size=1,
        max_size=7,
    ),
    factor=st.sampled_from(["1.05", "1.1", "1.25", "1.5", "2", "3.75"]),
    key=st.binary(max_size=12),
)
def test_bounded_loads_take_the_first_backend_under_its_bound(
    state: List[tuple], factor: str, key: bytes
) -> None:
    backends = make_backends(*[weight for weight, _, _, _ in state])
    excluded = []
    for backend, (_, in_flight, healthy, exclude) in zip(backends, state):
        backend.in_flight, backend.healthy = in_flight, healthy
        if exclude:
            excluded.append(backend)
    eligible = [b for b in backends if b.healthy and b not in excluded]
    picked = ConsistentHash(backends, balance_factor=float(factor)).choose(key, excluded)
    if not eligible:
        assert picked is None
        return
    bound = {b: load_bound(b, eligible, Fraction(factor)) for b in eligible}
    assert picked is not None and picked.in_flight + 1 <= bound[picked]
    order = preference(backends, key, excluded)
    for backend in order[: order.index(picked)]:
        assert backend.in_flight + 1 > bound[backend]  # every better choice is full


def test_hot_key_spills_to_its_second_choice_and_no_backend_exceeds_its_bound() -> None:
    backends = make_backends(1, 1, 1, 1, 1)
    hot = b"/hot"
    home, second, *_ = preference(backends, hot, [])
    bounded = ConsistentHash(backends, balance_factor=1.25)
    taken = []
    for _ in range(100):  # 100 requests for one key, none finishing
        backend = bounded.choose(hot)
        assert backend.in_flight + 1 <= load_bound(backend, backends, Fraction("1.25"))
        backend.in_flight += 1
        taken.append(backend)
    assert taken[0] is home
    assert next(b for b in taken if b is not home) is second
    assert max(b.in_flight for b in backends) <= math.ceil(1.25 * 100 / 5)
    counts = [Counter(taken)[b] for b in preference(backends, hot, [])]
    assert counts == sorted(counts, reverse=True)  # each spills to the next in the key's order
    assert counts[-1] < counts[0]
    # without a bound every one of them goes home
    assert {ConsistentHash(backends).choose(hot) for _ in range(10)} == {home}


def test_bounded_loads_follow_weights() -> None:
    a, b = make_backends(3, 1)
    key = next(k for k in uri_keys(100) if ConsistentHash([a, b]).choose(k) is a)
    bounded = ConsistentHash([a, b], balance_factor=1.25)
    # a's share is 3/4, so its bound is ceil(1.25 * (in_flight + 1) * 3/4) while b has none in flight
    a.in_flight = 14  # ceil(14.06) = 15 >= 14 + 1: a still fits
    assert bounded.choose(key) is a
    a.in_flight = 15  # ceil(15) = 15 < 15 + 1: a is full, b takes it
    assert bounded.choose(key) is b
    b.effective_weight = 1  # b's share shrinks, so a's grows: ceil(1.25 * 16 * 48/49) = 20
    assert bounded.choose(key) is a


def test_make_balancer_passes_hash_key_and_balance_factor() -> None:
    backends = make_backends(1, 1, 1)
    balancer = make_balancer("consistent-hash", backends, hash_key="uri", balance_factor=1.5)
    assert isinstance(balancer, WithBackups)
    primary = balancer.primary
    assert isinstance(primary, ConsistentHash)
    assert primary.key_of is uri_key
    assert primary.pick(req(b"10.0.0.1", b"/x")) is ConsistentHash(backends).choose(b"/x")
    backends[1].in_flight = backends[2].in_flight = 5
    backends[0].in_flight = 11  # 11 + 1 > ceil(1.5 * 22 / 3) = 11: a is full
    assert {primary.choose(k) for k in uri_keys(50)} == set(backends[1:])
    assert make_balancer("source-hash", backends).primary.key_of is client_key


# --- hash keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("client", "client"),
        ("URI", "uri"),
        (" uri ", "uri"),
        ("header:X-User", "header:x-user"),
        ("HEADER:x-user", "header:x-user"),
        ("cookie:Session_ID", "cookie:Session_ID"),
    ],
)
def test_parse_hash_key(text: str, parsed: str) -> None:
    assert parse_hash_key(text) == parsed


@pytest.mark.parametrize(
    "text", ["", "host", "client:x", "uri:", "header:", "cookie:", "header:a b", "query"]
)
def test_parse_hash_key_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"client, uri, host-uri, header:NAME or cookie:NAME|write e\.g\."):
        parse_hash_key(text)


HEADERS = [
    (b"host", b"example.com"),
    (b"x-user", b"alice"),
    (b"x-user", b"bob"),
    (b"x-empty", b""),
    (b"cookie", b"theme=dark; sid=abc123"),
    (b"cookie", b"lang=en"),
]


@pytest.mark.parametrize(
    ("hash_key", "expected"),
    [
        ("client", b"10.1.2.3"),
        ("uri", b"/path/x?q=1"),
        ("header:x-user", b"alice, bob"),
        ("header:x-missing", b"10.1.2.3"),
        ("header:x-empty", b"10.1.2.3"),
        ("cookie:sid", b"abc123"),
        ("cookie:lang", b"en"),
        ("cookie:SID", b"10.1.2.3"),  # cookie names are case-sensitive
        ("cookie:missing", b"10.1.2.3"),
    ],
)
def test_key_function_extracts_each_form(hash_key: str, expected: bytes) -> None:
    key_of = key_function(parse_hash_key(hash_key))
    assert key_of(req(b"10.1.2.3", b"/path/x?q=1", HEADERS)) == expected


@given(client=st.binary(min_size=1, max_size=16), target=st.binary(max_size=32))
def test_key_without_header_or_cookie_is_the_client_address(client: bytes, target: bytes) -> None:
    for hash_key in ("client", "header:x-user", "cookie:sid"):
        assert key_function(hash_key)(req(client, target)) == client
    assert key_function("uri")(req(client, target)) == target


# --- sticky sessions -------------------------------------------------------------------


def sticky_request(backend: Backend, client: bytes = b"10.0.0.1") -> Routed:
    return req(client, b"/", [(b"cookie", b"theme=x; lb=" + backend_id(backend.url))])


def test_backend_id_is_short_stable_and_hides_the_address() -> None:
    ident = backend_id("http://10.0.0.7:8080")
    assert ident == backend_id("http://10.0.0.7:8080")
    assert len(ident) == 12 and all(c in b"0123456789abcdef" for c in ident)
    assert b"10.0.0.7" not in ident and b"8080" not in ident
    assert len({backend_id(f"http://10.0.0.{i}:80") for i in range(256)}) == 256


def test_sticky_cookie_set_cookie_value() -> None:
    cookie = StickyCookie("lb")
    url = "http://10.0.0.7:8080"
    ident = backend_id(url)
    assert cookie.set_cookie([], url, secure=False) == b"lb=" + ident + b"; Path=/; HttpOnly; SameSite=Lax"
    assert cookie.set_cookie([], url, secure=True).endswith(b"; SameSite=Lax; Secure")
    assert cookie.set_cookie([(b"cookie", b"lb=" + ident)], url, secure=False) is None
    assert cookie.set_cookie([(b"cookie", b"lb=0123")], url, secure=False) is not None
    assert cookie.wanted([(b"cookie", b"a=1; lb=" + ident)]) == ident
    assert cookie.strip([(b"cookie", b"a=1; lb=" + ident), (b"x", b"y")]) == [
        (b"cookie", b"a=1"),
        (b"x", b"y"),
    ]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_sticky_cookie_wins_over_any_algorithm(name: str) -> None:
    backends = make_backends(1, 1, 1, 1)
    balancer = make_balancer(name, backends, rng=random.Random(1), sticky=StickyCookie("lb"))
    assert isinstance(balancer, StickySessions)
    assert verifyObject(IBalancer, balancer)
    for backend in backends:
        assert {balancer.pick(sticky_request(backend, b"10.0.0.%d" % i)) for i in range(10)} == {backend}


def test_sticky_sessions_fall_back_to_the_algorithm() -> None:
    a, b, c = backends = make_backends(1, 1, 1)
    balancer = make_balancer("round-robin", backends, sticky=StickyCookie("lb"))
    assert picks(balancer, 3) == "abc"  # no cookie
    unknown = req(b"10.0.0.1", b"/", [(b"cookie", b"lb=000000000000")])
    assert [balancer.pick(unknown).host for _ in range(3)] == ["a", "b", "c"]
    other_name = req(b"10.0.0.1", b"/", [(b"cookie", b"LB=" + backend_id(c.url))])
    assert balancer.pick(other_name) is a
    b.healthy = False
    assert balancer.pick(sticky_request(b)) is c  # down: rebalanced (round-robin goes on)
    b.healthy, b.ejected = True, True
    assert balancer.pick(sticky_request(b)) is a
    b.ejected = False
    assert balancer.pick(sticky_request(b), exclude=[b]) is c  # a retry goes elsewhere
    assert balancer.pick(sticky_request(b)) is b


def test_draining_backend_keeps_its_sticky_clients_only() -> None:
    backends = make_backends(1, 1)
    b = backends[1]
    balancer = make_balancer("round-robin", backends, sticky=StickyCookie("lb"))
    b.draining = True
    assert balancer.pick(sticky_request(b)) is b
    assert picks(balancer, 4) == "aaaa"  # new clients do not go to it


def test_disabled_backend_loses_its_sticky_clients() -> None:
    a, b = make_backends(1, 1)
    balancer = make_balancer("round-robin", [a, b], sticky=StickyCookie("lb"))
    b.set_state("disabled")
    assert all(balancer.pick(sticky_request(b)) is a for _ in range(4))
    b.set_state("enabled")
    assert balancer.pick(sticky_request(b)) is b


def test_sticky_sessions_follow_set_backends() -> None:
    a, b, c = make_backends(1, 1, 1)
    balancer = make_balancer("round-robin", [a, b], sticky=StickyCookie("lb"))
    assert balancer.pick(sticky_request(c)) is a  # c is not a backend (yet)
    balancer.set_backends([b, c])
    assert balancer.pick(sticky_request(c)) is c
    assert balancer.pick(sticky_request(a)).host in "bc"  # a left


# --- backup backends (every algorithm, through WithBackups) --------------------------


def hosts_seen(balancer: IBalancer, exclude: Sequence[Backend] = ()) -> str:
    """The hosts picked over 200 client keys, sorted and deduplicated ("" when none)."""
    seen = {balancer.pick(req(f"10.1.{i}.9".encode()), exclude) for i in range(200)}
    return "".join(sorted(b.host for b in seen if b is not None))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backups_idle_while_a_primary_is_eligible(name: str) -> None:
    backends = make_backends(1, 2, 5, 1, backups="cd")
    balancer = build(name, backends)
    assert hosts_seen(balancer) == "ab"
    backends[0].healthy = False
    assert hosts_seen(balancer) == "b"  # one primary left is enough
    backends[0].healthy = True
    backends[1].ejected = True
    assert hosts_seen(balancer) == "a"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backups_take_over_when_no_primary_is_healthy_and_leave_when_one_returns(name: str) -> None:
    a, b, c, d = backends = make_backends(1, 2, 5, 1, backups="cd")
    balancer = build(name, backends)
    a.healthy = False
    b.ejected = True
    assert hosts_seen(balancer) == "cd"
    c.healthy = False
    assert hosts_seen(balancer) == "d"
    d.ejected = True
    assert hosts_seen(balancer) == ""
    a.healthy = True
    assert hosts_seen(balancer) == "a"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backups_take_over_when_every_primary_is_excluded(name: str) -> None:
    a, b, c = backends = make_backends(1, 1, 1, backups="c")
    balancer = build(name, backends)
    assert hosts_seen(balancer, exclude=[a]) == "b"
    assert hosts_seen(balancer, exclude=[a, b]) == "c"
    assert hosts_seen(balancer, exclude=[a, b, c]) == ""


@pytest.mark.parametrize("name", ALL_NAMES)
def test_only_backups_configured_are_used(name: str) -> None:
    assert hosts_seen(build(name, make_backends(1, 1, backups="ab"))) == "ab"


def test_backup_tier_keeps_its_own_state() -> None:
    a, b, _, _ = backends = make_backends(1, 1, 1, 1, backups="cd")
    balancer = make_balancer("round-robin", backends)
    assert picks(balancer, 3) == "aba"
    a.healthy = b.healthy = False
    assert picks(balancer, 3) == "cdc"
    a.healthy = True
    # b is still down so a takes every pick; the backup cursor stays on d meanwhile
    assert picks(balancer, 2) == "aa"
    a.healthy = False
    assert picks(balancer, 2) == "dc"


def test_backups_set_backends_splits_tiers_and_keeps_state() -> None:
    a, b, c, d = make_backends(5, 1, 1, 1, backups="d")
    balancer = make_balancer("weighted-round-robin", [a, b, d])
    assert picks(balancer, 2) == "aa"  # a=-2, b=2
    balancer.set_backends([b, a, c, d])  # c added as a primary, d stays a backup
    # b=3 a=3 c=1 -> b (-4); b=-3 a=8 c=2 -> a
    assert picks(balancer, 2) == "ba"
    assert balancer.primary.pick(exclude=[a, b, c]) is None
    assert balancer.backup.pick() is d


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(ALL_NAMES),
    flags=st.lists(
        st.tuples(
            st.booleans(), st.booleans(), st.booleans(), st.sampled_from(BACKEND_STATES), st.booleans()
        ),
        min_size=1,
        max_size=6,
    ),
    key=st.binary(max_size=8),
)
def test_backup_rule_holds_for_any_state(name: str, flags: List[tuple], key: bytes) -> None:
    """The pick is eligible, and a backup only when no primary is eligible."""
    backends = make_backends(*range(1, len(flags) + 1))
    excluded = []
    for backend, (backup, healthy, ejected, state, exclude) in zip(backends, flags):
        # the backup flag comes from the spec; set it directly to explore every mix
        backend.backup, backend.healthy, backend.ejected = backup, healthy, ejected
        backend.set_state(state)
        if exclude:
            excluded.append(backend)
    eligible = [
        b for b in backends if b.healthy and not b.ejected and b.state == "enabled" and b not in excluded
    ]
    tier = [b for b in eligible if not b.backup] or eligible
    balancer = build(name, backends)
    for _ in range(3):
        picked = balancer.pick(req(key), excluded)
        assert picked in tier if tier else picked is None


# --- effective weights (slow start) --------------------------------------------------


def test_backend_weights_and_snapshot() -> None:
    primary, backup = make_backends(3, 1, backups="b")
    assert (primary.weight, primary.full_weight, primary.effective_weight) == (3, 48, 48)
    assert WEIGHT_SCALE == 16
    primary.effective_weight = 12
    assert primary.snapshot() == {
        "id": "a:80",
        "url": "http://a:80",
        "state": "enabled",
        "weight": 3,
        "effective_weight": 0.75,
        "backup": False,
        "healthy": True,
        "ejected": False,
        "draining": False,
        "disabled": False,
        "ejections": 0,
        "in_flight": 0,
        "requests": 0,
        "failures": 0,
        "timeouts": {"connect": 0, "response": 0, "idle": 0},
        "queue_waits": 0,
        "queue_timeouts": 0,
        "checks": {"pass": 0, "fail": 0},
        "latency_sum": 0.0,
        "latency_count": 0,
        "latency_buckets": [0] * 16,
    }
    assert backup.snapshot()["backup"] is True
    backup.ejected = backup.draining = True
    assert repr(backup) == "<Backend http://b:80 weight=1 up backup ejected draining in_flight=0>"


def test_backend_states_id_and_spec() -> None:
    (a,) = make_backends(3)
    assert (a.id, a.state, a.draining, a.disabled) == ("a:80", "enabled", False, False)
    for state, flags in (
        ("draining", (True, False)),
        ("disabled", (False, True)),
        ("enabled", (False, False)),
    ):
        a.set_state(state)
        assert (a.state, (a.draining, a.disabled), a.snapshot()["state"]) == (state, flags, state)
    with pytest.raises(ValueError, match="state 'off'; choose one of: enabled, draining, disabled"):
        a.set_state("off")
    assert a.state == "enabled"
    a.set_weight(5)
    assert a.spec() == BackendSpec("http://a:80", "a", 80, weight=5)
    assert Backend(BackendSpec("http://[::1]:8080", "::1", 8080)).id == "[::1]:8080"


def test_set_weight_outside_a_slow_start() -> None:
    a, b = make_backends(1, 1)
    balancer = SmoothWeightedRoundRobin([a, b])
    assert picks(balancer, 4) == "abab"
    a.set_weight(3)
    assert (a.weight, a.effective_weight, a.snapshot()["effective_weight"]) == (3, 48, 3.0)
    assert picks(balancer, 8) == "aabaaaba"
    a.set_weight(1)
    assert (a.weight, a.effective_weight) == (1, 16)
    assert Counter(picks(balancer, 8)) == {"a": 4, "b": 4}


def test_set_weight_during_a_slow_start_keeps_the_ramp() -> None:
    clock = Clock()
    slow_start = SlowStart(clock, 10.0)
    (a,) = make_backends(4)
    slow_start.begin(a)
    clock.advance(5.0)
    assert a.effective_weight == ramp_weight(64, 5.0, 10.0) == 32
    a.set_weight(8)  # higher: the ramp goes on towards the new full weight
    assert a.effective_weight == 32
    clock.advance(2.0)
    assert a.effective_weight == ramp_weight(128, 7.0, 10.0)
    a.set_weight(1)  # lower than the ramp so far: capped at once
    assert a.effective_weight == 16
    clock.advance(3.0)
    assert a.effective_weight == a.full_weight == 16
    a.set_weight(2)  # the ramp is over: full weight at once
    assert a.effective_weight == 32


def test_swrr_follows_effective_weight() -> None:
    a, b = make_backends(1, 1)
    a.effective_weight = 4  # a quarter of b's 16
    counts = Counter(picks(SmoothWeightedRoundRobin([a, b]), 200))
    assert counts == {"a": 40, "b": 160}


def test_least_connections_follows_effective_weight() -> None:
    a, b = make_backends(1, 1)
    a.effective_weight = 4
    b.in_flight = 3  # 0/4 < 3/16
    assert LeastConnections([a, b]).pick() is a
    a.in_flight = 1  # 1/4 > 3/16
    assert LeastConnections([a, b]).pick() is b


def test_p2c_follows_effective_weight() -> None:
    a, b = make_backends(1, 1)
    a.effective_weight = 1
    counts = Counter(picks(PowerOfTwoChoices([a, b], rng=random.Random(4)), 1700))
    # a is drawn first about 1 time in 17 and always loses a tie drawn second
    assert counts["a"] < 200


def test_source_hash_follows_effective_weight() -> None:
    a, b = make_backends(1, 1)
    a.effective_weight = 4
    counts = Counter(picks(ConsistentHash([a, b]), 1, key) for key in client_keys(2000))
    assert 300 < counts["a"] < 500  # 4/20 of the keys


def test_round_robin_ignores_weights() -> None:
    a, b = make_backends(1, 1)
    a.effective_weight = 1
    assert picks(RoundRobin([a, b]), 4) == "abab"


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["weighted-round-robin", "least-connections", "source-hash"]),
    weights=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
)
def test_scaling_effective_weights_changes_no_decision(name: str, weights: List[int]) -> None:
    """Effective weights in WEIGHT_SCALE units pick exactly as the plain weights would."""
    scaled, plain = make_backends(*weights), make_backends(*weights)
    for backend in plain:
        backend.effective_weight = backend.weight
    for backends in (scaled, plain):
        for index, backend in enumerate(backends):
            backend.in_flight = index % 3
    keys = client_keys(40)
    first, second = build(name, scaled), build(name, plain)
    assert [first.pick(req(k)).host for k in keys] == [second.pick(req(k)).host for k in keys]
