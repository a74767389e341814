"""Shape of the codebase in four numbers: import cycles, largest function, largest module, README lines.

    python scripts/code_metrics.py                 # this checkout
    python scripts/code_metrics.py --repo OTHER    # another checkout, e.g. a `git worktree` of an older commit

Cycles are counted on the graph of seg_pet's modules at the depth of the top-level layers
(seg_pet.config, seg_pet.data, ...), including imports made inside functions: each strongly
connected group of two or more layers is one cycle. Measured with grimp (installed with import-linter).
"""

from __future__ import annotations

import argparse
import ast
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    repo = parser.parse_args(argv).repo.resolve()
    groups = cycles(repo)
    fn_lines, fn = largest_function(repo / "seg_pet")
    mod_lines, mod = largest_module(repo / "seg_pet")
    readme = len((repo / "README.md").read_text().splitlines())
    print("| measure | value |\n|---|---|")
    print(f"| import cycles between layers | {len(groups)} {'; '.join(' <-> '.join(g) for g in groups)} |")
    print(f"| largest function | {fn_lines} lines ({fn}) |")
    print(f"| largest module | {mod_lines} lines ({mod}) |")
    print(f"| README lines | {readme} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
