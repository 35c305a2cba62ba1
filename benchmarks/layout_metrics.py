"""The code's shape, measured from its source: modules over 400 lines, functions over 60 lines,
import cycles (the service's and dlnn_core's, every import counted, function-local ones too),
private Optuna names outside dlnn_studies/store/optuna_private.py, and function-local imports.

    python benchmarks/layout_metrics.py [ROOT]     # ROOT: a checkout (default: this one)

Run it on two checkouts (e.g. `git archive COMMIT | tar -x -C /tmp/before`) to compare them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import layout_support as layout  # noqa: E402


def main(root: Path) -> None:
    big = layout.big_modules(root=root)
    print(f"modules > 400 lines: {len(big)}")
    for name, n in big:
        print(f"  {n:5d}  {name}")
    long = layout.long_functions(root=root)
    print(f"functions > 60 lines: {len(long)}")
    for module, func, n in long:
        print(f"  {n:5d}  {module}.{func}")
    for package in layout.PACKAGES:
        found = layout.cycles(layout.import_graph((package,), root))
        print(f"import cycles in {package}: {len(found)}")
        for c in found:
            print(f"  {' <-> '.join(c)}")
    private = layout.private_optuna_modules(root=root)
    print(f"modules naming private Optuna names outside the adapter: {len(private)} "
          f"({sum(len(u) for u in private.values())} uses)")
    for name, uses in sorted(private.items()):
        print(f"  {name}: {', '.join(f'{w} (line {line})' for line, w in uses)}")
    local = layout.local_imports(root=root)
    for package in layout.PACKAGES:
        print(f"function-local imports in {package}: {sum(n for m, n in local.items() if m.split('.')[0] == package)}")
    print(f"function-local imports in all: {sum(local.values())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else layout.REPO)
