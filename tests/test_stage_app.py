"""scripts/stage_app.py: the copy handed to `flwr run` gives Flower's own FAB, without the walk of .venv."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parent.parent


def _stage_app():
    spec = importlib.util.spec_from_file_location("stage_app", ROOT / "scripts" / "stage_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage_app = _stage_app()


def _staged(app: Path) -> Path:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stage_app.py"), str(app)], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def test_the_project_staged_builds_the_same_fab_as_the_checkout():
    staged = _staged(ROOT)
    try:
        assert staged != ROOT
        assert build_fab_from_disk(staged) == build_fab_from_disk(ROOT)
    finally:
        shutil.rmtree(staged)


def _toy_app(root: Path, gitignore: str) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (root / ".gitignore").write_text(gitignore)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "app.py").write_text("x = 1\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "big.py").write_text("y = 2\n")
    (root / ".venv" / "lib" / "keep.py").write_text("z = 3\n")
    (root / "link.py").symlink_to(root / "pkg" / "app.py")
    (root / "data").mkdir()
    (root / "data" / "images.bin").write_bytes(b"\0" * 1000)


@pytest.mark.parametrize("gitignore", [".venv/\n", ".venv/\n!.venv/lib/keep.py\n", ""])
def test_a_toy_app_staged_builds_the_same_fab(tmp_path, gitignore):
    """Ignored directories pruned, a re-included file kept (nothing pruned then), symlinks and data skipped."""
    app = tmp_path / "app"
    _toy_app(app, gitignore)
    staged = _staged(app)
    try:
        assert build_fab_from_disk(staged) == build_fab_from_disk(app)
        kept = set(stage_app.app_files(app.resolve()))
        assert "link.py" not in kept and "pkg/app.py" in kept
        assert "data/images.bin" not in kept  # no FAB holds it, so it is not copied
        assert ".venv/lib/big.py" not in kept  # ignored, or excluded by Flower's own patterns
    finally:
        shutil.rmtree(staged)


def test_what_is_not_an_app_directory_is_passed_through(tmp_path):
    assert _staged(tmp_path) == tmp_path
    assert _staged(tmp_path / "app.fab") == tmp_path / "app.fab"


def test_an_app_too_deep_for_flower_is_handed_over_as_it_is(tmp_path):
    """Flower refuses a FAB path deeper than its limit; `flwr run` on the directory itself says which."""
    from flwr.supercore.constant import MAX_DIR_DEPTH

    app = tmp_path / "app"
    _toy_app(app, ".venv/\n")
    deep = app.joinpath(*[f"d{i}" for i in range(MAX_DIR_DEPTH + 1)])
    deep.mkdir(parents=True)
    (deep / "deep.py").write_text("")
    assert _staged(app) == app
