"""docs/configuration.md is the configuration reference: it must match the code, row by row."""

from __future__ import annotations

import pathlib
import re
from typing import Callable, Dict, List

import pytest
import yaml

from powerlb.config import config_from_mapping
from powerlb.routeconfig import ROUTE_KEYS
from powerlb.routing import RouteTable
from powerlb.settings import POOL_KEYS, SETTINGS, Setting
from tests.support.pki import PKI

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
#: The file the documentation names for backend-ca-file; the tests put a real CA there.
DOCUMENTED_CA_FILE = "/etc/powerlb/internal-ca.pem"
#: The file the documentation names for redis-password-file; the tests put a password there.
DOCUMENTED_PASSWORD_FILE = "/etc/powerlb/redis-password"


@pytest.fixture
def real_files(tmp_path: pathlib.Path) -> Callable[[str], str]:
    """Rewrites documented file paths in YAML text to real files of the right kind."""
    ca_file = str(PKI(tmp_path).ca_file)
    password_file = tmp_path / "redis-password"
    password_file.write_text("secret\n")
    return lambda text: text.replace(DOCUMENTED_CA_FILE, ca_file).replace(
        DOCUMENTED_PASSWORD_FILE, str(password_file)
    )


def _example(real_files: Callable[[str], str]) -> Dict[str, object]:
    """The example configuration at the end of the page, as a mapping."""
    block = re.search(r"<!-- example-config -->\n```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "the example configuration block is missing"
    return yaml.safe_load(real_files(block.group(1)))


def _cells(line: str) -> List[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _rows() -> Dict[str, List[str]]:
    """The settings table, by YAML key: [option, YAML form, default, meaning] with code quotes removed."""
    rows: Dict[str, List[str]] = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith(("| `--", "| (CLI: no)")):
            continue
        cells = [re.sub(r"^`(.*)`$", r"\1", cell) for cell in _cells(line)]
        if cells[0] == "--config":
            continue
        key = cells[1].split(":", 1)[0]
        assert key not in rows, f"{key} has two rows"
        rows[key] = cells
    return rows


def _expected_default(setting: Setting) -> str:
    if setting.many:
        return "—"
    if setting.default is None:
        return "off"
    return setting.show(setting.default) or "none"  # an empty list, e.g. purge-allow


def test_every_setting_has_one_row_and_nothing_else_does() -> None:
    assert sorted(_rows()) == sorted(setting.key for setting in SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.key)
def test_row_names_the_option_default_and_a_working_yaml_form(
    setting: Setting, real_files: Callable[[str], str]
) -> None:
    option, yaml_form, default, meaning = _rows()[setting.key]
    assert option == (f"--{setting.name}" if setting.cli else "(CLI: no)")
    assert default == _expected_default(setting)
    assert meaning
    mapping = yaml.safe_load(real_files(yaml_form))
    assert list(mapping) == [setting.key]
    # In the context of the example (e.g. hash-key needs a hashing algorithm).
    config = config_from_mapping({**_example(real_files), **mapping})
    assert getattr(config, setting.attr) != setting.default, "the YAML form should show a non-default value"


def test_example_configuration_parses_and_sets_every_key(real_files: Callable[[str], str]) -> None:
    mapping = _example(real_files)
    assert sorted(mapping) == sorted(setting.key for setting in SETTINGS)
    config = config_from_mapping(mapping)
    assert len(config.backends) == 3 and config.backends[2].backup


# --- Pools and routes ---


def _route_rows() -> Dict[str, List[str]]:
    """The route keys table (the one whose first header cell is ``key``), by key."""
    rows: Dict[str, List[str]] = {}
    in_table = False
    for line in DOC.read_text().splitlines():
        if line.startswith("| key |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            cells = [re.sub(r"^`(.*)`$", r"\1", cell) for cell in _cells(line)]
            assert cells[0] not in rows, f"{cells[0]} has two rows"
            rows[cells[0]] = cells
    return rows


def test_every_route_key_has_one_row() -> None:
    assert sorted(_route_rows()) == sorted(ROUTE_KEYS)


@pytest.mark.parametrize("key", sorted(ROUTE_KEYS))
def test_route_row_has_a_working_yaml_form(key: str) -> None:
    _, yaml_form, default, meaning = _route_rows()[key]
    assert default and meaning
    mapping = yaml.safe_load(yaml_form)
    assert list(mapping) == [key]
    # In a route that has what some keys need (redirect-status needs redirect...).
    route = {"pool": "default", "redirect": "https://example.com{target}", "rate-limit": "1/s", **mapping}
    pools = {"default": None, "api": None}  # both with the top-level backends
    config = config_from_mapping({"backends": ["http://127.0.0.1:9001"], "pools": pools, "routes": [route]})
    assert len(config.routes) == 1


def test_pool_keys_are_listed() -> None:
    listed = DOC.read_text().split("<!-- pool-keys -->", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"`([a-z-]+)`", listed) == list(POOL_KEYS)


def test_routes_example_parses_and_routes() -> None:
    block = re.search(r"<!-- example-routes -->\n```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "the pools and routes example is missing"
    config = config_from_mapping(yaml.safe_load(block.group(1)))
    assert sorted(config.pools) == ["api", "web"]
    table = RouteTable(config.routes)
    assert table.match(b"GET", b"API.example.com", b"/v1/users", []) is config.routes[1]
    assert table.match(b"GET", b"www.example.com", b"/static/a.css", []) is config.routes[3]
