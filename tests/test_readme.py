"""The README's research-code example runs as written."""

from __future__ import annotations

import re

from conftest import ROOT


def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from research code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(2, 2)" in out and "(75, 5)" in out and "share_of_network" in out


def test_readme_has_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert "pip install -e . && python -m gtl_jax.evolve" in text
    assert "pip install -e '.[test]' && python -m pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && python -m pytest" in ci


def test_readme_public_api_line_lists_all():
    import gtl_jax

    text = (ROOT / "README.md").read_text()
    listed = re.search(r"Public API \(`gtl_jax/__init__.py`\):(.*?)\.\s", text, re.S)
    names = re.findall(r"`([^`]+)`", listed.group(1))
    assert sorted(names) == sorted(gtl_jax.__all__)
    assert len(names) == len(set(names))
