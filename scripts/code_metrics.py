"""Shape of the codebase: import cycles, largest function, largest module, classes, docstring and comment share,
README lines and lines in scripts/.

    python scripts/code_metrics.py                 # this checkout
    python scripts/code_metrics.py --repo OTHER    # another checkout, e.g. a `git worktree` of an older commit

Cycles are counted on the graph of seg_pet's modules at the depth of the top-level layers
(seg_pet.config, seg_pet.data, ...), including imports made inside functions: each strongly
connected group of two or more layers is one cycle. Measured with grimp (installed with import-linter).
The docstring and comment share is the package's lines that are part of a docstring or hold a comment,
over its non-blank lines.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

import grimp


def layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycles(repo: Path) -> list[list[str]]:
    sys.path.insert(0, str(repo))
    graph = grimp.build_graph("seg_pet", cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = layer(module), layer(imported)
            if a != b and a != "seg_pet" and b != "seg_pet":
                edges.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return groups


def largest_function(package: Path) -> tuple[int, str]:
    best = (0, "")
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                best = max(best, (length, f"{path.relative_to(package.parent)}:{node.lineno} {node.name}()"))
    return best


def largest_module(package: Path) -> tuple[int, str]:
    return max((len(p.read_text().splitlines()), str(p.relative_to(package.parent))) for p in package.rglob("*.py"))


def classes(package: Path) -> int:
    return sum(isinstance(node, ast.ClassDef) for path in package.rglob("*.py") for node in ast.walk(ast.parse(path.read_text())))


def docstring_and_comment_lines(path: Path) -> tuple[int, int]:
    """(lines that are part of a docstring or hold a comment, non-blank lines) of one module."""
    text = path.read_text()
    marked: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) is not None:
            first = node.body[0]
            marked.update(range(first.lineno, first.end_lineno + 1))
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            marked.add(token.start[0])
    return len(marked), sum(1 for line in text.splitlines() if line.strip())


def docstring_and_comment_share(package: Path) -> tuple[int, int]:
    counts = [docstring_and_comment_lines(p) for p in package.rglob("*.py")]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def train_entry_point(path: Path) -> tuple[int, int, int]:
    """(lines of train(), lines of its epoch loop, names imported by `from ... import` in its module)."""
    tree = ast.parse(path.read_text())
    imported = sum(len(node.names) for node in tree.body if isinstance(node, ast.ImportFrom))
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train")
    loop = next(node for node in ast.walk(fn) if isinstance(node, ast.For))
    return fn.end_lineno - fn.lineno + 1, loop.end_lineno - loop.lineno + 1, imported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    repo = parser.parse_args(argv).repo.resolve()
    groups = cycles(repo)
    fn_lines, fn = largest_function(repo / "seg_pet")
    mod_lines, mod = largest_module(repo / "seg_pet")
    readme = len((repo / "README.md").read_text().splitlines())
    doc_lines, code_lines = docstring_and_comment_share(repo / "seg_pet")
    scripts = sorted((repo / "scripts").glob("*.py"))
    script_lines = sum(len(p.read_text().splitlines()) for p in scripts)
    train_lines, loop_lines, imported = train_entry_point(repo / "seg_pet" / "training" / "train.py")
    print("| measure | value |\n|---|---|")
    print(f"| train(): lines, epoch-loop lines, names imported by training/train.py | {train_lines}, {loop_lines}, {imported} |")
    print(f"| import cycles between layers | {len(groups)} {'; '.join(' <-> '.join(g) for g in groups)} |")
    print(f"| largest function | {fn_lines} lines ({fn}) |")
    print(f"| largest module | {mod_lines} lines ({mod}) |")
    print(f"| classes in the package | {classes(repo / 'seg_pet')} |")
    print(f"| docstring and comment share | {doc_lines / code_lines:.0%} ({doc_lines} of {code_lines} non-blank lines) |")
    print(f"| README lines | {readme} |")
    print(f"| lines in scripts/ | {script_lines} ({len(scripts)} scripts) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
