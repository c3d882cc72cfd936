"""Execute the notebooks at full size and store their outputs in place (what the repository shows).

    python scripts/run_notebooks.py                      # every notebook in notebooks/
    python scripts/run_notebooks.py notebooks/getting_started.ipynb
    python scripts/run_notebooks.py --quick              # CI's small size (outputs stored too)

Each notebook's first cell gets the line that says how long it took and on what machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from datetime import date
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\*Run time and machine:.*\*$", re.M)


def machine() -> str:
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores {platform.machine()}{memory}, {platform.system()}, no GPU used"


def execute(path: Path, quick: bool, timeout: int) -> float:
    notebook = nbformat.read(path, as_version=4)
    if quick:
        os.environ["FL_DP_NOTEBOOK_QUICK"] = "1"
    else:
        os.environ.pop("FL_DP_NOTEBOOK_QUICK", None)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - started
    size = "quick (CI) size" if quick else "full size"
    line = f"*Run time and machine: {seconds:.0f} s at {size} on {machine()} ({date.today()}, `python scripts/run_notebooks.py`).*"
    first = notebook.cells[0]
    first.source = STAMP.sub(line, first.source) if STAMP.search(first.source) else first.source + "\n\n" + line
    nbformat.write(notebook, path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    for path in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"{path.name}: {execute(path, args.quick, args.timeout):.0f} s", flush=True)


if __name__ == "__main__":
    main()
