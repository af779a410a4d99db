"""What the workflow needs while Snakemake plans, without importing torch, xarray or zarr (so
that ``snakemake -n`` stays fast): each rule's code inputs from the package's import graph, the
node layers recorded in a stats store, a language model's shape (its ``config.json``) and the
free space for its stores. Planning only reads: it never deletes or changes a file
(a dry run must leave a user's results, and anything else under ``results/``, as they are).

Code inputs: a rule's stage function lives in one package module; that module and every
package module it imports, transitively, are the rule's code, so editing any of them reruns the
rule (Snakemake checksums inputs). Imports are read from the source (``ast``), never executed:
top-level and function-level ``import``/``from`` statements both count, since a module a stage
imports lazily is still code it runs (those under ``if TYPE_CHECKING:`` never run and do not).
Model kinds are not imported by the stages (they are looked up by name, see ``kinds``): for
each concern of a kind that a rule's code uses (it imports the accessor ``kinds.<concern>``),
the rule adds its experiment's ``kinds/<kind>/<concern>.py`` and its imports, so that editing
one kind reruns only that kind's experiments, and only the stages that use that concern.
"""

import ast
import functools
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from interaction_basis.data.sources import looks_like_path
from interaction_basis.kinds.registry import CONCERNS
from interaction_basis.resources import ModelShape, format_bytes, shape_from_config

PACKAGE = "interaction_basis"
PACKAGE_DIR = Path(__file__).resolve().parent


def check_local_source(source: str, setting: str, *, needed: bool) -> None:
    """Fail while the workflow is planned, before any job, when a model or dataset source is a
    local path that does not exist and its download job would have to read it (``needed``: its
    folder under ``resources/`` is not there yet, and no rule of the workflow makes it)."""
    if not needed or not looks_like_path(source) or Path(source).expanduser().exists():
        return
    raise FileNotFoundError(
        f"{setting} is {source!r}, a local folder or file that does not exist (relative to the "
        f"working directory {os.getcwd()}). Fix the path, or name a hub id of the form "
        "'org/name'; nothing was run."
    )


def read_model_shape(
    folders: Iterable[str | os.PathLike], source: str, revision: str | None
) -> tuple[ModelShape, Path] | None:
    """A language model's shape and the ``config.json`` it was read from: in the first of
    ``folders`` (its download, a local source) that has one, else in the Hugging Face hub cache
    (never the network); None while it is not known (not downloaded yet)."""
    found = next(
        (Path(f) / "config.json" for f in folders if (Path(f) / "config.json").is_file()), None
    )
    if found is None and not looks_like_path(source):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
        found = Path(cached) if isinstance(cached, str) else None
    if found is None:
        return None
    return shape_from_config(json.loads(found.read_text(encoding="utf-8"))), found


def free_bytes(folder: str | os.PathLike) -> tuple[int, Path]:
    """Free bytes of the filesystem that holds ``folder`` (or would: its nearest existing
    parent), and that folder."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free, path


def check_disk(
    needed: Mapping[str, Mapping[str, int]], folder: str | os.PathLike, hints: Iterable[str]
) -> None:
    """Stop before any job when the stores still to be written (``needed``: experiment ->
    store -> bytes) need more than the free space of ``folder``'s filesystem; the error names
    the sizes and ``hints`` (the settings that reduce them)."""
    total = sum(sum(stores.values()) for stores in needed.values())
    free, where = free_bytes(folder)
    if total <= free:
        return
    parts = "; ".join(
        f"{name}: " + ", ".join(f"{store} {format_bytes(n)}" for store, n in stores.items() if n)
        for name, stores in needed.items()
        if any(stores.values())
    )
    raise OSError(
        f"Not enough disk space: the stores still to be written need {format_bytes(total)} "
        f"({parts}), but the filesystem of {folder} ({where}) has {format_bytes(free)} free. "
        f"To need less: {'; '.join(hints)}. Or free space, or move the results (--directory). "
        "resources.check_disk: false starts anyway. Nothing was run."
    )


# How to find the value a profile placeholder stands for.
_PLACEHOLDER_HINTS = {
    "slurm_account": "your SLURM account (`sacctmgr -n show assoc user=$USER format=account`)",
    "slurm_partition": "a partition (`sinfo -s` lists them)",
    "gpu_model": "the GPU model of that partition (`sinfo -o '%P %G'`)",
}


def check_placeholders(resources: Iterable[tuple[str, str, object]]) -> None:
    """Stop before any job while a profile still holds a placeholder (``"<account>"``), which
    SLURM would refuse only after submission. ``resources``: (where, name, value) for every
    default and per-rule resource in effect."""
    for where, name, value in resources:
        if isinstance(value, str) and re.fullmatch(r"\s*[\"']?<[^<>]*>[\"']?\s*", value):
            hint = _PLACEHOLDER_HINTS.get(name, "the value for your site")
            raise ValueError(
                f"The resource {name} ({where}) is still the placeholder {value!r}: replace it "
                f"with {hint} in the profile (the lines marked `# EDIT` in "
                "profiles/slurm/profile.yaml), or remove it; nothing was submitted."
            )


def read_node_layers(path: str | os.PathLike) -> list[str]:
    """The node layers in a store's root attributes (its ``zarr.json``), read without zarr.

    The job that wrote the store has just finished (it is a checkpoint's output); its readers
    verify the whole store when they open it.
    """
    meta = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8"))
    return list(meta["attributes"]["node_layers"])


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The source file of package module ``interaction_basis.x.y`` (a module or a package)."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imported_modules(path: Path, module: str) -> frozenset[str]:
    """Package modules that the source of ``module`` imports (absolute or relative)."""
    return _imports_of(path, path.stat().st_mtime_ns, module)


@functools.cache
def _imports_of(path: Path, mtime_ns: int, module: str) -> frozenset[str]:
    # Parsed once per file version: every rule's code inputs walk the same modules.
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in _walk_run_time(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import mod` imports a submodule when `mod` is one.
            found |= {f"{base}.{a.name}" for a in node.names}
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def _walk_run_time(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


@functools.cache
def _closure(module: str, package_dir: Path) -> frozenset[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        path = module_file(m, package_dir)
        if m in seen or not path.is_file():
            continue  # `from package import name` where name is not a module
        seen.add(m)
        # Importing a submodule runs its parent packages' __init__ first.
        parents = [".".join(m.split(".")[:i]) for i in range(2, m.count(".") + 1)]
        todo += [*parents, *_imported_modules(path, m)]
    return frozenset(seen)


def module_closure(modules: Iterable[str], package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Source files of ``modules`` and every package module they import, transitively, with
    their package data."""
    files = set()
    for m in modules:
        files |= {module_file(x, package_dir) for x in _closure(m, package_dir.resolve())}
    # A module's package data (``<module>_assets/``, e.g. the explorer's JavaScript) is its code.
    for f in list(files):
        assets = f.with_name(f"{f.stem}_assets")
        if assets.is_dir():
            files |= {a for a in assets.iterdir() if a.is_file()}
    return sorted(files)


def stage_code(
    script: str | os.PathLike, kind: str | None, package_dir: Path = PACKAGE_DIR
) -> list[Path]:
    """A rule's code: the package modules its ``script`` imports, transitively, and for every
    concern of the model kinds that those use (they import the accessor ``kinds.<concern>``),
    the experiment's ``kinds/<kind>/<concern>.py`` with its imports (``kind`` None: a rule of
    no experiment, which must not use a kind)."""
    path = Path(script)
    modules = set(_imported_modules(path, "__main__"))
    files = module_closure(modules, package_dir)
    while True:
        concerns = [
            f"{PACKAGE}.kinds.{kind}.{c}"
            for c in CONCERNS
            if module_file(f"{PACKAGE}.kinds.{c}", package_dir) in files
        ]
        if concerns and kind is None:
            raise ValueError(f"{path} uses a model kind but its rule has no experiment wildcard.")
        grown = modules | {m for m in concerns if module_file(m, package_dir).is_file()}
        if grown == modules:
            return files
        modules = grown
        files = module_closure(modules, package_dir)
