"""``python -m benchmarks NAME [options]``: run one benchmark module's ``main`` (``python -m benchmarks``: list them)."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import benchmarks

HELPERS = {"lib"}  # modules that are not benchmarks


def available() -> dict[str, str]:
    """``{name: first line of its docstring}`` of every benchmark module."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(benchmarks.__file__).parent)]):
        if info.name.startswith("_") or info.name in HELPERS:
            continue
        spec = importlib.util.find_spec(f"benchmarks.{info.name}")
        text = Path(spec.origin).read_text()
        doc = text.split('"""', 2)[1].strip().splitlines()[0] if text.lstrip().startswith('"""') else ""
        found[info.name] = doc
    return found


def main() -> None:
    names = available()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        width = max(map(len, names))
        print("usage: python -m benchmarks NAME [options]   (NAME --help for its options)\n")
        print("\n".join(f"  {name:<{width}}  {doc}" for name, doc in sorted(names.items())))
        return
    name = sys.argv[1]
    if name not in names:
        print(f"python -m benchmarks: no benchmark {name!r}; available: {', '.join(sorted(names))}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"python -m benchmarks {name}", *sys.argv[2:]]
    importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main()
