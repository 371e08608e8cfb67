"""No source file over LIMIT lines: a file that long holds several things, and a newcomer cannot read it whole.

A file may stay over the limit only by an entry in ALLOWED that says why it is one coherent thing; an entry for
a file that has come back under the limit (or is gone) fails too, so the list only shrinks.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 600  # lines
FOLDERS = ("stereovoxel_ros", "research", "benchmarks", "launch", "scripts", "tests")

# repository-relative path -> why it is one coherent thing despite its length
ALLOWED: dict[str, str] = {}


def source_files(root: Path = ROOT) -> list[Path]:
    """Every Python file of the repository's own folders (not .venv, build or install trees)."""
    files = [p for folder in FOLDERS for p in (root / folder).rglob("*.py")]
    return sorted([*root.glob("*.py"), *files])


def oversized(paths: list[Path], limit: int = LIMIT, root: Path = ROOT) -> dict[str, int]:
    """Repository-relative path -> line count of every file over ``limit`` lines."""
    counts = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in paths}
    return {path: n for path, n in counts.items() if n > limit}


def test_no_source_file_is_over_the_limit_unless_allowed() -> None:
    over = oversized(source_files())
    offenders = [f"{path}: {n} lines" for path, n in sorted(over.items()) if path not in ALLOWED]
    assert not offenders, (
        f"files over {LIMIT} lines; split them (or add an ALLOWED entry saying why one is one coherent "
        "thing):\n" + "\n".join(offenders)
    )
    stale = sorted(set(ALLOWED) - set(over))
    assert not stale, f"ALLOWED entries no longer over {LIMIT} lines (or gone); remove them: {stale}"
    assert all(reason.strip() for reason in ALLOWED.values()), "every ALLOWED entry needs a reason"


def test_the_scan_sees_the_package_and_counts_lines(tmp_path: Path) -> None:
    found = {str(p.relative_to(ROOT)) for p in source_files()}
    assert "stereovoxel_ros/cli.py" in found and "tests/test_source_size.py" in found
    assert any(path.startswith("research/stereovoxel_research/") for path in found)
    assert not any(path.startswith(".venv") for path in found)
    (tmp_path / "long.py").write_text("x = 1\n" * (LIMIT + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * LIMIT)
    assert oversized(sorted(tmp_path.glob("*.py")), root=tmp_path) == {"long.py": LIMIT + 1}
