"""The README's research-code example runs as written."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from research code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    # What its comments say it prints: the learngene's share of the network its spec was
    # made for, then of the wider one; the seeds' and generations' axes; the step's count.
    assert "learngene: 19.5% of its network" in out
    assert "# 19.5%: r = 0.45 gives about 20%" in code
    assert "(2, 1)" in out and "generation 3 " in out
    assert "(75, 5) 4.9% of the wider network" in out
    assert "# (75, 5) 4.9%" in code


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


def _readme_commands() -> list[list[str]]:
    """Every ``python -m gtl_jax.<command> ...`` line of the README's shell blocks, joined
    across backslash continuations and split like a shell, comments dropped."""
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "python" in words and "-m" in words:
                module = words[words.index("-m") + 1]
                if module.startswith("gtl_jax."):
                    commands.append(words[words.index("-m") + 1 :])
    return commands


def test_every_readme_command_parses_into_a_valid_config():
    # Each command line of the README is parsed by its command's own parser and its config
    # checked (experiment_of), so a renamed field or flag breaks this test, not a reader.
    # The cheap ones are run by other tests (the smoke runs, --help); the long ones are
    # what the README's numbers come from.
    import pytest

    from gtl_jax import evolve, experiment, inherit, study

    own = {
        "gtl_jax.evolve": evolve.EVOLVE_FLAGS,
        "gtl_jax.inherit": inherit.INHERIT_FLAGS,
        "gtl_jax.study": study.STUDY_FLAGS,
    }
    commands = _readme_commands()
    assert len(commands) >= 15 and {c[0] for c in commands} == set(own)
    for module, *argv in commands:
        if "--help" in argv:
            with pytest.raises(SystemExit):
                experiment.parse_command_line(
                    argv, prog=module, description="", own=own[module]
                )
            continue
        line = experiment.parse_command_line(
            argv, prog=module, description="", own=own[module]
        )
        experiment.experiment_of(line.config)
