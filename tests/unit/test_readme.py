"""README.md stays true: the embedding example is the tested file; options live in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_embedding_example_is_examples_embed_py_verbatim():
    opening = "<!-- examples/embed.py -->\n```python\n"
    start = README.index(opening) + len(opening)
    end = README.index("```\n<!-- end examples/embed.py -->")
    assert README[start:end] == (ROOT / "examples" / "embed.py").read_text(encoding="utf-8")


def test_readme_points_to_the_configuration_reference():
    assert "docs/configuration.md" in README


def test_readme_shows_the_two_commands():
    assert "make run" in README and "make test" in README
