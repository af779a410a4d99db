"""Check a finished run without computing anything: ``python -m interaction_basis.verify``.

Every Zarr store under the given folders (default ``results``) is checked against its integrity
record, reading every array in full (what a job checks when it reads the store, and for the
large activation arrays also their CRC-32, which jobs check only at the end of a full pass);
every JSON must parse and every ``weights.npz`` must read as complete, finite arrays. What is
damaged is listed, with the one ``snakemake`` command that rebuilds exactly those results and
everything computed from them: ``--forcerun`` with the damaged files, which reruns the jobs that
wrote them, and the default target then reruns the jobs that read them.

Stores that carry neither an integrity record nor the workflow's provenance were not written by
the workflow (a user's own files under ``results/``): they are skipped and named.
"""

import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from interaction_basis import storage

#: Result files without an integrity record, checked by reading them.
CHECKED_FILES = (".json", ".npz")


class Damage(NamedTuple):
    path: Path
    problems: list[str]


class Report(NamedTuple):
    damaged: list[Damage]
    skipped: list[Path]  # stores not written by the workflow
    n_stores: int
    n_files: int


def find_results(root: Path) -> Iterator[tuple[str, Path]]:
    """``("store", path)`` for every ``*.zarr`` folder and ``("file", path)`` for every JSON and
    ``weights.npz`` under ``root``, in sorted order; never inside a store, never hidden
    leftovers (``.<name>.partial-<pid>``)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [d for d in dirnames if d.startswith(".") or d.endswith(".zarr")]:
            dirnames.remove(name)
            if not name.startswith("."):
                yield "store", Path(dirpath, name)
        for name in sorted(filenames):
            if name.endswith(CHECKED_FILES) and not name.startswith("."):
                yield "file", Path(dirpath, name)


def check(roots: Sequence[str | os.PathLike]) -> Report:
    damaged, skipped, n_stores, n_files = [], [], 0, 0
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist: name a results folder of a run.")
        found = [("store" if root.suffix == ".zarr" else "file", root)]
        for what, path in find_results(root) if root.is_dir() and root.suffix != ".zarr" else found:
            if what == "store":
                if not _written_by_workflow(path):
                    skipped.append(path)
                    continue
                n_stores += 1
                problems = storage.check_store(path)
            else:
                n_files += 1
                problems = storage.check_file(path)
            if problems:
                damaged.append(Damage(path, problems))
    return Report(damaged, skipped, n_stores, n_files)


def _written_by_workflow(store: Path) -> bool:
    """A Zarr v3 store with our integrity record or provenance; a store without its root
    metadata (``zarr.json``) is a folder a failed job left behind, so it counts too."""
    meta = store / "zarr.json"
    if not meta.is_file():
        return not (store / ".zgroup").exists()  # a Zarr v2 store is a user's own
    text = meta.read_text(encoding="utf-8", errors="replace")
    return f'"{storage.INTEGRITY_ATTR}"' in text or '"config_sha256"' in text


def project_dir(path: Path) -> Path:
    """The Snakemake working directory a result belongs to: the parent of its ``results``."""
    resolved = path.resolve()
    for parent in resolved.parents:
        if parent.name == "results":
            return parent.parent
    return Path.cwd()


def rebuild_commands(damaged: Sequence[Path]) -> list[str]:
    """One ``snakemake`` command per project folder (normally one in all) that reruns the jobs
    that wrote ``damaged`` and, through the default target, every job that reads them."""
    by_dir: dict[Path, list[str]] = {}
    for path in damaged:
        workdir = project_dir(path)
        by_dir.setdefault(workdir, []).append(os.path.relpath(path.resolve(), workdir))
    commands = []
    for workdir, files in by_dir.items():
        where = [] if workdir == Path.cwd().resolve() else ["--directory", str(workdir)]
        commands.append(
            shlex.join(["snakemake", "--cores", "all", *where, "--forcerun", *sorted(files)])
        )
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    roots = args or ["results"]
    try:
        report = check(roots)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    for path in report.skipped:
        print(f"skipped {path}: not written by the workflow (no integrity record or provenance)")
    checked = f"{report.n_stores} stores and {report.n_files} JSON/weights files"
    if not report.damaged:
        print(f"All {checked} under {', '.join(map(str, roots))} are intact.")
        return 0
    print(f"Checked {checked}: {len(report.damaged)} damaged:")
    for damage in report.damaged:
        print(f"  {damage.path}: {'; '.join(damage.problems)}")
    print("Rebuild exactly these and everything computed from them with:")
    for command in rebuild_commands([d.path for d in report.damaged]):
        print(f"  {command}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
