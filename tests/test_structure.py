"""Short functions and classes: none over 60 and 250 lines in the modules at the top."""
import ast

import pytest
from conftest import ROOT

MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250
# Every SQL statement lives in db.Database, by design (STYLE.md).
EXEMPT = {"db.Database"}

MODULES = sorted(ROOT.glob("*.py"))


def too_long(path) -> dict[str, int]:
    """Qualified name -> line count, of each function and class in the module over its limit."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                lines = child.end_lineno - child.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(child, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    found[name] = lines
                visit(child, name)
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), path.stem)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_no_function_is_over_60_lines_and_no_class_over_250(path):
    over = {name: lines for name, lines in too_long(path).items() if name not in EXEMPT}
    assert not over, f"over {MAX_FUNCTION_LINES} lines (a function) or {MAX_CLASS_LINES} (a class): {over}"

