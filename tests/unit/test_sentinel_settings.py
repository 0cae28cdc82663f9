"""``redis-sentinel`` and ``redis-sentinel-master``: parsing and the cross-checks with ``redis``."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.config import ConfigError, config_from_mapping
from powerlb.values import SENTINEL_PORT, format_sentinels, parse_sentinels


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.5:26380", (("10.0.0.5", 26380),)),
        ("a, b:1", (("a", SENTINEL_PORT), ("b", 1))),
        ("[::1]:5,sentinel.internal", (("::1", 5), ("sentinel.internal", SENTINEL_PORT))),
    ],
)
def test_parse_sentinels(text: str, parsed: Tuple[Tuple[str, int], ...]) -> None:
    assert parse_sentinels(text) == parsed


@pytest.mark.parametrize(
    ("text", "says"), [("", "empty address"), ("a,,b", "empty"), ("a:0", "port"), ("a:x", "port")]
)
def test_parse_sentinels_rejects(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sentinels(text)


hosts = st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,20}\Z"), st.ip_addresses().map(str))


@given(st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1, max_size=4))
def test_format_and_parse_round_trip(addresses: List[Tuple[str, int]]) -> None:
    assert parse_sentinels(format_sentinels(tuple(addresses))) == tuple(addresses)


BASE: Dict[str, Any] = {"backends": ["http://127.0.0.1:9"], "redis": "redis://127.0.0.1:6379/2"}


def test_both_settings_together_configure_the_sentinels() -> None:
    config = config_from_mapping(
        {**BASE, "redis-sentinel": "127.0.0.1:26379", "redis-sentinel-master": "shop"}
    )
    assert (config.redis_sentinel, config.redis_sentinel_master) == ((("127.0.0.1", 26379),), "shop")


@pytest.mark.parametrize(
    ("settings", "field", "says"),
    [
        ({"redis-sentinel": "a"}, "redis-sentinel", "needs redis-sentinel-master"),
        ({"redis-sentinel-master": "shop"}, "redis-sentinel-master", "needs redis-sentinel:"),
        (
            {"redis": "rediss://r", "redis-sentinel": "a", "redis-sentinel-master": "shop"},
            "redis-sentinel",
            "not rediss",
        ),
        (
            {"redis": None, "redis-sentinel": "a", "redis-sentinel-master": "m"},
            "redis-sentinel",
            "only with redis",
        ),
    ],
)
def test_cross_checks_name_the_field_and_the_fix(settings: Dict[str, Any], field: str, says: str) -> None:
    mapping = {key: value for key, value in {**BASE, **settings}.items() if value is not None}
    with pytest.raises(ConfigError, match=says) as caught:
        config_from_mapping(mapping)
    assert str(caught.value).startswith(field + ":")
