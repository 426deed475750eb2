"""What differs between families stays in their folders: code elsewhere asks the family object, never which one it is.

Read from the source with ``ast``: outside ``glm_engine/model/<family>/`` (and the registry that lists them) no code
tests ``isinstance`` against a family's config class or compares anything with a family's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from glm_engine.model.registry import FAMILIES

PACKAGE = Path(__file__).resolve().parent.parent / "glm_engine"
FAMILY_FOLDERS = {PACKAGE / "model" / folder for folder in ("glm130b", "chatglm", "causal_glm", "chatglm2", "glm4_hf")}
ALLOWED = {PACKAGE / "model" / "registry.py"}  # finds a family by its name or config class: the one place that may
CONFIG_CLASSES = {family.config_type.__name__ for family in FAMILIES}
FAMILY_NAMES = {family.name for family in FAMILIES}


def family_switches(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every isinstance on a family config class and every comparison with a family name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} if len(node.args) > 1 else set()
            if names & CONFIG_CLASSES:
                found.append((node.lineno, f"isinstance on {sorted(names & CONFIG_CLASSES)}"))
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
            if literals & FAMILY_NAMES:
                found.append((node.lineno, f"comparison with {sorted(literals & FAMILY_NAMES)}"))
    return found


def outside_family_folders() -> list[Path]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ALLOWED or any(folder in path.parents for folder in FAMILY_FOLDERS):
            continue
        files.append(path)
    return files


def test_no_family_switch_outside_the_family_folders():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in outside_family_folders()
        for line, what in family_switches(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "ask the family (family_of(config)) instead:\n" + "\n".join(offenders)


def test_the_check_finds_a_switch():
    code = "if isinstance(config, ChatGLMConfig):\n    pass\nif family.name == 'chatglm':\n    pass\n"
    assert [line for line, _ in family_switches(ast.parse(code))] == [1, 3]
