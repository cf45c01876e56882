"""The library's import graph: rssm_tf's modules import one another in one direction
(no circle, also none hidden in a function body), and rssm_tf imports nothing of the
export, serving or examples packages."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rssm_tf"


def _imports(path: Path) -> set[str]:
    """Every ``rssm_tf.*`` module or top-level package ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_import_circles_and_one_direction():
    graph = {}
    for path in PACKAGE.glob("*.py"):
        imported = _imports(path)
        assert not {n for n in imported
                    if n.split(".")[0] in ("export", "serving", "examples", "rssm_tf_export",
                                           "rssm_tf_serving")}, path.name
        graph[f"rssm_tf.{path.stem}"] = {n for n in imported if n.startswith("rssm_tf.")}
    assert graph["rssm_tf.replay"] and "rssm_tf.data" not in graph["rssm_tf.replay"]

    def reaches(start: str, target: str, seen: set) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and not seen.add(nxt)
                                 and reaches(nxt, target, seen)):
                return True
        return False

    circles = sorted(m for m in graph if m != "rssm_tf.__init__" and reaches(m, m, set()))
    assert circles == []
