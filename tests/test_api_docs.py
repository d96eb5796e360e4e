"""docs/api.md lists every public class and function of every module, and its examples run."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import graphsr

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def public_names(module) -> set[str]:
    return {name for name, value in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__}


def sections() -> dict[str, str]:
    text = PAGE.read_text()
    parts = re.split(r"^## `([\w.]+)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_public_class_and_function_is_listed():
    documented = sections()
    for info in pkgutil.walk_packages(graphsr.__path__, "graphsr."):
        if info.name == "graphsr.__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        names = public_names(module)
        if not names:
            continue
        assert info.name in documented, f"docs/api.md has no section for {info.name}"
        listed = set(re.findall(r"^- `(\w+)`", documented[info.name], flags=re.M))
        assert listed == names, f"{info.name}: missing {sorted(names - listed)}, stale {sorted(listed - names)}"
        assert "```python" in documented[info.name], f"{info.name} has no example"


def test_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for module, text in sections().items():
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            try:
                exec(compile(block, f"docs/api.md ({module})", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the example of {module} fails: {error!r}") from error
    assert (tmp_path / "run" / "history.png").exists() and (tmp_path / "report" / "report.md").exists()
