"""README.md stays true: the embedding example is the tested file, and every option is documented."""

from __future__ import annotations

from pathlib import Path

from powerlb.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_embedding_example_is_examples_embed_py_verbatim():
    opening = "<!-- examples/embed.py -->\n```python\n"
    start = README.index(opening) + len(opening)
    end = README.index("```\n<!-- end examples/embed.py -->")
    assert README[start:end] == (ROOT / "examples" / "embed.py").read_text(encoding="utf-8")


def test_every_option_is_documented():
    for setting in SETTINGS:
        documented = f"`--{setting.name}`" if setting.cli else f"`{setting.key}`"
        assert documented in README, setting.name


def test_readme_shows_the_two_commands():
    assert "make run" in README and "make test" in README
