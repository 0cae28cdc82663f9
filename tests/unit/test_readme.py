"""README.md stays true: what it names exists, and what it quotes is quoted verbatim or runs.

Its option table and examples are checked against the code (the settings table, the
twistd and powerlb-ctl parsers, the Makefile, the package's files); docs/configuration.md
is the full reference, checked by test_config_reference.py.
"""

from __future__ import annotations

import re
import shlex
from typing import Set

import pytest

from powerlb.config import ConfigError, config_from_mapping
from powerlb.ctl import parser as ctl_parser
from powerlb.settings import SETTINGS
from powerlb.tap import Options
from tests.support import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
#: Blocks the README quotes from files (verbatim, checked here), which the tests run.
QUOTED = {"examples/embed.py": "python", "examples/tour.sh": "sh"}


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next section of that level."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def quoted(path: str) -> str:
    opening = f"<!-- {path} -->\n```{QUOTED[path]}\n"
    start = README.index(opening) + len(opening)
    return README[start : README.index(f"```\n<!-- end {path} -->", start)]


def outside_quotes() -> str:
    """The README without the blocks quoted from files."""
    text = README
    for path in QUOTED:
        text = text.replace(quoted(path), "")
    return text


def twistd_flags() -> Set[str]:
    """The long options of ``twistd powerlb``."""
    return {"--" + name.rstrip("=") for name in Options().longOpt}


def ctl_flags() -> Set[str]:
    """The long options of powerlb-ctl and of its commands."""
    flags: Set[str] = set()
    parsers = [ctl_parser()]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            flags.update(option for option in action.option_strings if option.startswith("--"))
            parsers.extend((getattr(action, "choices", None) or {}).values())
    return flags


@pytest.mark.parametrize("path", sorted(QUOTED))
def test_quoted_files_are_verbatim(path: str) -> None:
    assert quoted(path) == (REPO / path).read_text(encoding="utf-8")


def test_every_option_named_is_one_of_powerlb_or_powerlb_ctl() -> None:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", outside_quotes()))
    assert named, "no options found: the pattern no longer matches the README"
    unknown = named - twistd_flags() - ctl_flags()
    assert not unknown, f"the README names options that do not exist: {sorted(unknown)}"


def test_option_table_defaults_are_the_real_defaults() -> None:
    settings = {f"--{setting.name}": setting for setting in SETTINGS if setting.cli}
    rows = re.findall(r"^\| (`--[^|]*) \| ([^|]*) \|", section("Options"), re.M)
    assert len(rows) >= 5, rows
    for flags, default in rows:
        names = re.findall(r"`(--[a-z-]+)`", flags)
        assert set(names) <= twistd_flags(), names
        setting = settings.get(names[0])
        if setting is None or setting.many:
            assert default.strip() == "—", (flags, default)
            continue
        shown = "off" if setting.default is None else f"`{setting.show(setting.default)}`"
        assert default.strip() == shown, flags


def test_yaml_keys_named_are_settings() -> None:
    keys = {setting.key for setting in SETTINGS}
    named = re.findall(r"in YAML `([a-z-]+):`", README)
    assert named and set(named) <= keys, named


def test_twistd_example_is_a_valid_command_line() -> None:
    block = re.search(r"\*\*As a twistd plugin\*\*.*?```sh\n(.*?)```", README, re.S)
    assert block is not None, "the twistd plugin example is missing"
    argv = shlex.split(block.group(1).replace("\\\n", " "))
    assert argv[:3] == ["twistd", "-n", "powerlb"], argv
    options = Options()
    options.parseOptions(argv[3:])
    config = options.config
    assert [(spec.url, spec.weight) for spec in config.backends] == [
        ("http://127.0.0.1:9001", 1),
        ("http://127.0.0.1:9002", 3),
    ]
    assert (config.algorithm, config.health_path) == ("weighted-round-robin", "/health")
    assert (config.health_interval, config.cache_size) == (2, 64 * 1024 * 1024)


def test_quoted_configuration_error_is_the_real_one() -> None:
    example = re.search(r"e\.g\.\n`(algorithm: unknown algorithm 'fastest'; choose one of: )\.\.\.`", README)
    assert example is not None, "the example of a configuration error is missing"
    with pytest.raises(ConfigError) as raised:
        config_from_mapping({"backends": ["http://127.0.0.1:9"], "algorithm": "fastest"})
    assert str(raised.value).startswith(example.group(1))


def test_make_targets_named_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w.-]*):", makefile, re.M))
    named = set(re.findall(r"(?:`|^)make ([a-z]+)\b", README, re.M))
    assert {"run", "test"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_layout_lists_every_module_and_only_existing_ones() -> None:
    listed = set(re.findall(r"`((?:powerlb|twisted)/[\w/]+\.\w+)`", section("Layout")))
    package = [path for path in (REPO / "powerlb").iterdir() if path.suffix in (".py", ".html")]
    shipped = {"twisted/plugins/powerlb_plugin.py", *(str(path.relative_to(REPO)) for path in package)}
    assert sorted(listed - shipped) == [], "listed but missing"
    assert sorted(shipped - listed) == [], "in the package but not in the layout table"


@pytest.mark.parametrize("document", ["README.md", "docs/configuration.md"])
def test_test_paths_named_exist(document: str) -> None:
    named = re.findall(r"`(tests/[\w/.]*\w)`", (REPO / document).read_text(encoding="utf-8"))
    assert named
    assert [name for name in named if not (REPO / name).exists()] == []
