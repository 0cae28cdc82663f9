"""An in-memory DNS zone whose records a test changes: the resolver itself in unit tests, the
authority of a real ``twisted.names`` server in end-to-end ones."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

from twisted.internet import defer
from twisted.names import common, dns, error


class Zone(common.ResolverBase):
    """DNS records a test sets and changes: A/AAAA and SRV (with the targets' addresses in the
    additional section). ``failing`` makes every query fail (as if timed out); ``queries`` records them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: Dict[Tuple[str, int], List[dns.RRHeader]] = {}
        self.failing = False
        #: Whether SRV answers carry their targets' addresses in the additional section.
        self.additional = True
        self.queries: List[Tuple[str, int]] = []

    def addresses(self, name: str, *hosts: str, ttl: int = 5) -> None:
        """Make ``name`` stand for ``hosts`` (A or AAAA records), replacing what it had."""
        self.records[(name, dns.A)] = [
            dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(host, ttl))
            for host in hosts
            if ":" not in host
        ]
        self.records[(name, dns.AAAA)] = [
            dns.RRHeader(name, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(host, ttl))
            for host in hosts
            if ":" in host
        ]

    def services(self, name: str, *records: Tuple[int, int, int, str], ttl: int = 5) -> None:
        """Make ``name`` stand for SRV ``records`` of ``(priority, weight, port, target)``."""
        self.records[(name, dns.SRV)] = [
            dns.RRHeader(name, dns.SRV, ttl=ttl, payload=dns.Record_SRV(*record, ttl=ttl))
            for record in records
        ]

    def remove(self, name: str) -> None:
        for key in [key for key in self.records if key[0] == name]:
            del self.records[key]

    def _lookup(self, name: Union[bytes, str], cls: int, type: int, timeout: Any) -> defer.Deferred:
        text = (name.decode() if isinstance(name, bytes) else name).lower()
        self.queries.append((text, type))
        if self.failing:
            return defer.fail(error.DNSQueryTimeoutError(text))
        if not any(key[0] == text for key in self.records):
            return defer.fail(error.DNSNameError(text))
        answers = list(self.records.get((text, type), []))
        additional = [
            record
            for answer in answers
            if answer.type == dns.SRV and self.additional
            for kind in (dns.A, dns.AAAA)
            for record in self.records.get((str(answer.payload.target), kind), [])
        ]
        return defer.succeed((answers, [], additional))
