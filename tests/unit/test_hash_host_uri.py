"""The ``host-uri`` hash key: the front tier of the two-tier pattern (README "Running a cluster")."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.balancing import ConsistentHash
from powerlb.hashkey import host_uri_key, key_function, parse_hash_key
from tests.support.backends import make_backend


class Routed(NamedTuple):
    """A client request as balancers see it, with its host."""

    target: bytes
    host: Optional[bytes]
    headers: List[Tuple[bytes, bytes]]
    client_host: bytes


def req(host: Optional[bytes], target: bytes, client: bytes = b"10.0.0.1") -> Routed:
    return Routed(target, host, [], client)


@pytest.mark.parametrize("text", ["host-uri", "HOST-URI", " host-uri "])
def test_parse_host_uri(text: str) -> None:
    assert parse_hash_key(text) == "host-uri"
    assert key_function(parse_hash_key(text)) is host_uri_key


@pytest.mark.parametrize("text", ["host-uri:x", "hosturi", "host"])
def test_parse_rejects_near_misses_naming_host_uri(text: str) -> None:
    with pytest.raises(ValueError, match="host-uri"):
        parse_hash_key(text)


@pytest.mark.parametrize(
    ("host", "target", "key"),
    [
        (b"shop.example", b"/a?x=1", b"shop.example/a?x=1"),
        (b"Shop.Example:8080", b"/a", b"shop.example:8080/a"),
        (None, b"/a", b"/a"),
        (b"blog.example", b"*", b"blog.example*"),
    ],
)
def test_host_uri_key(host: Optional[bytes], target: bytes, key: bytes) -> None:
    assert host_uri_key(req(host, target)) == key


BACKENDS = [make_backend(80, name) for name in "abcdef"]
hosts = st.from_regex(rb"\A[a-z0-9.-]{1,20}\Z")
targets = st.from_regex(rb"\A/[!-~]{0,30}\Z")


@given(
    host=hosts, target=targets, clients=st.lists(st.binary(min_size=1, max_size=8), min_size=2, max_size=5)
)
def test_same_host_and_uri_always_go_to_one_backend(host: bytes, target: bytes, clients: List[bytes]) -> None:
    balancer = ConsistentHash(BACKENDS, key_of=host_uri_key)
    picked = {balancer.pick(req(host, target, client)) for client in clients}
    picked.add(balancer.pick(req(host.upper(), target)))  # the host is case-insensitive
    assert len(picked) == 1


@given(target=targets)
def test_one_uri_on_many_hosts_spreads(target: bytes) -> None:
    balancer = ConsistentHash(BACKENDS, key_of=host_uri_key)
    picked = {balancer.pick(req(b"site%d.example" % n, target)) for n in range(40)}
    assert len(picked) >= 3
