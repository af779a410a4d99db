"""Models and datasets from the Hugging Face hub, or from local folders, into ``resources/``.

Only the download rules call this module (conventions §7); everything downstream reads the
folders it writes, offline.

How a source is resolved:

- **An existing local path** (a folder written by ``save_pretrained``, a data file or a folder
  of data files) is validated and its files are hard-linked (or copied, across filesystems)
  into ``out_dir``. No network, no cache. ``revision`` is ignored (with a warning if given).
- **Anything that looks like a path but does not exist** (absolute, ``./``, ``../``, ``~``, or
  more than one ``/``) is an error: it is never sent to the hub as a repo id.
- **Otherwise it is a hub repo id.** :func:`huggingface_hub.snapshot_download` fills the hub
  cache (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``) and the snapshot's files are linked into
  ``out_dir``. Going through the cache, not ``local_dir=``, is what makes a pre-filled cache work
  with ``HF_HUB_OFFLINE=1`` (``snapshot_download(local_dir=...)`` ignores the cache offline).
  With ``HF_HUB_OFFLINE=1`` nothing is requested from the network at all.

Files are hard-linked where possible (no second copy of the weights on disk), so edit nothing
in ``out_dir`` in place: the hub cache (or the local source) shares those files.

Tokens: ``huggingface_hub`` reads ``HF_TOKEN`` (or the token saved by ``hf auth login``) from the
environment itself. This module never accepts, logs or stores a token.

Revisions: a 40-hex commit SHA pins the download. A branch or tag name (``"main"``) or ``None``
is accepted with an :class:`UnpinnedRevisionWarning` (an error with ``require_pinned=True``),
because a moving branch silently changes every downstream number. Either way the resolved commit
SHA is returned in the provenance and written to ``out_dir/.provenance.json``, so downstream
stores can record it. The file is hidden so that ``datasets`` never mistakes it for data.
"""

import codecs
import json
import logging
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from interaction_basis.data.sources import looks_like_path
from interaction_basis.storage import atomic_path

log = logging.getLogger(__name__)

#: Tries of a hub download whose failure can pass (a timeout, HTTP 429 or 5xx), and the pause
#: before the second (doubling after). Anything else (a failed name lookup, offline mode, a
#: missing repo) fails at once: trying again cannot change it.
HUB_ATTEMPTS = 4
HUB_BACKOFF_S = 5.0

#: Snakemake target that runs the download rules (named in error messages).
DOWNLOAD_TARGET = "all_downloads"
#: Provenance file written into every output folder (hidden: ``datasets`` skips dot-files).
PROVENANCE_FILE = ".provenance.json"

#: Model files fetched from the hub: config, tokenizer and safetensors weights. ``*.json`` also
#: covers ``tokenizer.json``, ``vocab.json``, ``generation_config.json`` and shard indexes.
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.txt", "tokenizer.model", "*.tiktoken")
#: Fallback for repos without safetensors (e.g. older checkpoints): PyTorch pickles, which
#: transformers loads with ``weights_only=True``.
MODEL_BIN_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
#: Dataset files fetched by default: the dataset card (its ``configs:`` maps files to splits) and
#: the columnar/JSON-lines data. Plain ``*.txt`` dumps are left out on purpose: several hub
#: datasets ship large ``.txt`` copies beside the parquet files, and mixed folders confuse the
#: ``datasets`` file-type inference. Pass ``allow_patterns`` to fetch other files.
DATASET_PATTERNS = ("README.md", "*.parquet", "*.jsonl", "*.jsonl.gz", "*.json")
#: Local data files accepted by :func:`download_dataset` (and read by ``text_data.load_texts``).
DATA_SUFFIXES = (".txt", ".parquet", ".jsonl", ".json", ".arrow", ".csv")

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_TOKENIZER_FILE_SETS = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.model",),
    ("vocab.txt",),
)


class UnpinnedRevisionWarning(UserWarning):
    """A hub download was asked for a branch/tag name (or no revision) instead of a commit SHA."""


class HubDownloadError(OSError):
    """A hub model or dataset could not be fetched (network, offline cache, id, access)."""


def is_commit_sha(revision: str | None) -> bool:
    """Whether ``revision`` is a full 40-hex commit SHA (the only pinned form)."""
    return revision is not None and _COMMIT_RE.fullmatch(revision) is not None


def download_model(
    repo_id_or_path: str,
    revision: str | None,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    require_pinned: bool = False,
    require_tokenizer: bool = True,
) -> dict[str, Any]:
    """Fetch a causal LM (config, tokenizer, weights) into ``out_dir``.

    Args:
        repo_id_or_path: a hub repo id (``"roneneldan/TinyStories-1M"``) or an existing local
            folder written by ``save_pretrained`` (plus the tokenizer's ``save_pretrained``).
        revision: commit SHA to pin (recommended), a branch/tag name, or ``None`` (``main``).
            Ignored for local folders.
        out_dir: folder to create, e.g. ``resources/models/<model>``. It appears only once
            complete (written to a temporary sibling, then renamed).
        cache_dir: hub cache to use; ``None``: ``huggingface_hub``'s (``HF_HUB_CACHE``, by
            default ``$HF_HOME/hub``).
        require_pinned: raise instead of warning when ``revision`` is not a commit SHA.
        require_tokenizer: the folder must hold tokenizer files (``tokenizer.json``,
            ``vocab.json`` + ``merges.txt``, ``tokenizer.model`` or ``vocab.txt``).

    Returns:
        Provenance: ``kind``, ``source`` (``"hub"``/``"local"``), ``repo_id``, ``revision``
        (as requested, ``"main"`` for ``None``; ``None`` for local sources), ``commit`` (the
        resolved SHA; for local sources only where the folder is itself a hub-cache snapshot,
        else ``None``), ``pinned``, ``local_source``, ``path`` and ``files``. Also written to
        ``out_dir/.provenance.json``.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: an invalid model folder (no ``config.json``, weights or tokenizer), or an
            unpinned revision with ``require_pinned``.
        HubDownloadError: the hub download failed; the message names the id, the revision and
            the fixes.
    """
    local = _as_local_path(repo_id_or_path, "model")
    if local is not None:
        if not local.is_dir():
            raise ValueError(
                f"Model source {str(local)!r} is a file; expected a folder written by "
                "save_pretrained (config.json, model.safetensors, tokenizer files)."
            )
        _warn_ignored_revision(revision, local)
        files = _select_model_files(local, _list_files(local))
        _check_model_files(local, files, require_tokenizer)
        prov = _provenance("model", *_snapshot_identity(local), revision, local)
        return _materialise(local, files, out_dir, prov)

    revision = _check_revision(repo_id_or_path, revision, "model", require_pinned)
    snapshot = _snapshot(repo_id_or_path, revision, "model", MODEL_PATTERNS, cache_dir)
    files = _list_files(snapshot)
    if not any(f.endswith(".safetensors") for f in files):
        # No safetensors in this repo (or not in the cache): fall back to PyTorch weights.
        snapshot = _snapshot(repo_id_or_path, revision, "model", MODEL_BIN_PATTERNS, cache_dir)
        files = _list_files(snapshot)
    files = _select_model_files(snapshot, files)
    _check_model_files(snapshot, files, require_tokenizer, repo_id_or_path, revision)
    prov = _provenance("model", repo_id_or_path, _snapshot_identity(snapshot)[1], revision)
    return _materialise(snapshot, files, out_dir, prov)


def download_dataset(
    name_or_path: str,
    revision: str | None,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_patterns: Sequence[str] | None = None,
    require_pinned: bool = False,
) -> dict[str, Any]:
    """Fetch a text dataset into ``out_dir`` (a folder that ``text_data.load_texts`` reads).

    Args:
        name_or_path: a hub dataset id (``"roneneldan/TinyStories"``), or an existing local data
            file (``.txt``, ``.parquet``, ``.jsonl``, ...) or folder of them.
        revision: commit SHA to pin (recommended), a branch/tag name, or ``None`` (``main``).
            Ignored for local sources.
        out_dir: folder to create, e.g. ``resources/datasets/<dataset>``; atomic like
            :func:`download_model`. A local file keeps its name inside it.
        cache_dir: hub cache; ``None``: ``huggingface_hub``'s default.
        allow_patterns: hub files to fetch (glob patterns on repo paths); ``None``:
            :data:`DATASET_PATTERNS`. Local sources copy every data file.
        require_pinned: raise instead of warning when ``revision`` is not a commit SHA.

    Returns:
        Provenance as in :func:`download_model` (``kind`` ``"dataset"``).

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: no data files, or a data file that cannot be read (corrupt parquet,
            invalid JSON lines, non-UTF-8 text).
        HubDownloadError: the hub download failed.
    """
    local = _as_local_path(name_or_path, "dataset")
    if local is not None:
        _warn_ignored_revision(revision, local)
        if local.is_file():
            root, files = local.parent, [local.name]
        else:
            root, files = local, [f for f in _list_files(local) if _is_data_file(f)]
            files += [f for f in _list_files(local) if Path(f).name == "README.md"]
        _check_data_files(root, files, str(local))
        prov = _provenance("dataset", *_snapshot_identity(root), revision, local)
        return _materialise(root, sorted(set(files)), out_dir, prov)

    revision = _check_revision(name_or_path, revision, "dataset", require_pinned)
    patterns = tuple(allow_patterns) if allow_patterns is not None else DATASET_PATTERNS
    snapshot = _snapshot(name_or_path, revision, "dataset", patterns, cache_dir)
    files = [f for f in _list_files(snapshot) if _matches(f, patterns)]
    _check_data_files(snapshot, files, f"hub dataset {name_or_path!r} at {revision!r}", patterns)
    prov = _provenance("dataset", name_or_path, _snapshot_identity(snapshot)[1], revision)
    return _materialise(snapshot, files, out_dir, prov)


def read_provenance(folder: str | os.PathLike) -> dict[str, Any]:
    """The provenance that :func:`download_model`/:func:`download_dataset` wrote to ``folder``."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {str(folder)!r} was not written by the download rules. "
            f"Run `snakemake --cores 1 {DOWNLOAD_TARGET}` (on a node with internet)."
        )
    return json.loads(path.read_text())


# --- resolution -------------------------------------------------------------------------------


def _as_local_path(source: str, kind: str) -> Path | None:
    """The local path ``source`` names, or ``None`` if it is a hub id."""
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve()
    if looks_like_path(source):
        raise FileNotFoundError(
            f"Local {kind} source {source!r} does not exist. Check the path in the config (a "
            f"hub id has the form 'org/name' and is not a path)."
        )
    return None


def _check_revision(repo_id: str, revision: str | None, kind: str, require_pinned: bool) -> str:
    if is_commit_sha(revision):
        return revision  # type: ignore[return-value]
    shown = "no revision (the default branch 'main')" if revision is None else repr(revision)
    msg = (
        f"The {kind} {repo_id!r} is requested at {shown}, not a 40-hex commit SHA: a moving "
        "branch silently changes every downstream number. Pin the commit shown on the hub's "
        "'Files and versions' page (or printed in the provenance of this download)."
    )
    if require_pinned:
        raise ValueError(msg)
    warnings.warn(msg, UnpinnedRevisionWarning, stacklevel=3)
    return "main" if revision is None else revision


def _warn_ignored_revision(revision: str | None, local: Path) -> None:
    if revision is not None:
        warnings.warn(
            f"revision {revision!r} is ignored for the local source {str(local)!r}.",
            UserWarning,
            stacklevel=3,
        )


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.is_offline_mode()) or env in {"1", "ON", "YES", "TRUE"}


def _snapshot(
    repo_id: str,
    revision: str,
    repo_type: str,
    patterns: Sequence[str],
    cache_dir: str | os.PathLike | None,
) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (downloading if online)."""
    import huggingface_hub
    from huggingface_hub import constants

    offline = _offline()
    for attempt in range(1, HUB_ATTEMPTS + 1):
        try:
            folder = huggingface_hub.snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                cache_dir=None if cache_dir is None else Path(cache_dir),
                allow_patterns=list(patterns),
                local_files_only=offline,
            )
        except Exception as err:  # every hub failure gets the same actionable message
            if not offline and attempt < HUB_ATTEMPTS and is_transient(err):
                pause = HUB_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("%s (try %d of %d); again in %.0f s", err, attempt, HUB_ATTEMPTS, pause)
                time.sleep(pause)
                continue
            cache = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
            raise HubDownloadError(
                _hub_error_message(repo_id, revision, repo_type, err, offline, cache)
            ) from err
        return Path(folder)
    raise AssertionError("unreachable")


def is_transient(err: BaseException) -> bool:
    """Whether a download error can pass on its own: a timeout, HTTP 429 or 5xx, anywhere in
    its chain of causes, and no failed name lookup (an offline machine) in it."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        chain.append(link)
        link = link.__cause__ or link.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
        m in text for m in ("nameresolution", "name resolution", "name or service not known")
    ):
        return False
    for e in chain:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower():
            return True
    return False


def _hub_error_message(
    repo_id: str,
    revision: str,
    repo_type: str,
    err: Exception,
    offline: bool,
    cache: str | os.PathLike,
) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    kind = "dataset" if repo_type == "dataset" else "model"
    url = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    flag = " --repo-type dataset" if kind == "dataset" else ""
    where = (
        f"HF_HUB_OFFLINE is set, so only the local cache {str(cache)!r} was searched, and it "
        "does not hold this revision."
        if offline
        else "The hub could not be reached or refused the request."
    )
    # Offline, huggingface_hub's own text ("pass local_files_only=False") only misleads.
    detail = type(err).__name__ if offline else f"{type(err).__name__}: {err}"
    lines = [
        f"Could not get the {kind} {repo_id!r} at revision {revision!r} from the Hugging Face "
        f"hub ({detail}).",
        where,
        "How to fix:",
        f"- check the id and the revision (a 40-hex commit SHA) on {url};",
        "- gated or private repos: accept the terms on the hub and export HF_TOKEN in the "
        "environment (never put a token in the config);",
        f"- compute nodes usually have no internet: run `snakemake --cores 1 {DOWNLOAD_TARGET}` "
        "on a node with internet (e.g. the login node), then rerun;",
        f"- or pre-fill the cache: `HF_HOME=... hf download {repo_id}{flag} --revision "
        f"{revision}` on a node with internet, and use the same HF_HOME here;",
        f"- or point the config at a local {kind} folder instead of a hub id.",
    ]
    if isinstance(err, GatedRepoError | RepositoryNotFoundError):
        lines.insert(2, "The repo does not exist or needs access rights (HF_TOKEN).")
    return "\n".join(lines)


def _snapshot_identity(folder: Path) -> tuple[str | None, str | None]:
    """``(repo_id, commit)`` if ``folder`` is a hub-cache snapshot, else ``(None, None)``.

    Cache layout: ``<cache>/{models,datasets}--<org>--<name>/snapshots/<commit>/``.
    """
    folder = Path(folder)
    if folder.parent.name != "snapshots" or not is_commit_sha(folder.name):
        return None, None
    repo = folder.parent.parent.name
    repo_id = repo.split("--", 1)[1].replace("--", "/") if "--" in repo else None
    return repo_id, folder.name


# --- files ------------------------------------------------------------------------------------


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root``, hidden entries excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.isfile(os.path.join(dirpath, name)):
                out.append(Path(dirpath, name).relative_to(root).as_posix())
    return out


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch(path, p) for p in patterns)


def _select_model_files(root: Path, files: list[str]) -> list[str]:
    """Config/tokenizer/safetensors files; PyTorch ``.bin`` weights only without safetensors."""
    chosen = [f for f in files if _matches(f, MODEL_PATTERNS)]
    if not any(f.endswith(".safetensors") for f in chosen):
        chosen += [f for f in files if _matches(Path(f).name, MODEL_BIN_PATTERNS)]
    return sorted(set(chosen))


def _check_model_files(
    root: Path,
    files: list[str],
    require_tokenizer: bool,
    repo_id: str | None = None,
    revision: str | None = None,
) -> None:
    where = f"{repo_id!r} at {revision!r}" if repo_id else repr(str(root))
    present = set(files)
    shown = ", ".join(sorted(present)) or "nothing"
    problems = []
    if "config.json" not in present:
        problems.append("config.json is missing")
    weights = [f for f in present if f.endswith((".safetensors", ".bin"))]
    if not weights:
        problems.append("no weights (model.safetensors or pytorch_model.bin)")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in present:
            shards = set(json.loads((root / index).read_text()).get("weight_map", {}).values())
            missing = sorted(shards - present)
            if missing:
                problems.append(f"{index} lists missing shards {missing}")
    if require_tokenizer and not any(set(s) <= present for s in _TOKENIZER_FILE_SETS):
        problems.append(
            "no tokenizer files (tokenizer.json, vocab.json + merges.txt, tokenizer.model or "
            "vocab.txt; save the tokenizer with save_pretrained into the same folder)"
        )
    if problems:
        raise ValueError(
            f"Model source {where} is not a usable Hugging Face model folder: "
            f"{'; '.join(problems)}. Found: {shown}. It must hold what model.save_pretrained "
            "and tokenizer.save_pretrained write."
        )


def _is_data_file(path: str) -> bool:
    name = Path(path).name
    return name.endswith(DATA_SUFFIXES) or name.endswith(".jsonl.gz")


def _check_data_files(
    root: Path, files: list[str], where: str, patterns: Sequence[str] | None = None
) -> None:
    data = [f for f in files if _is_data_file(f)]
    if not data:
        hint = (
            f" None matched allow_patterns {list(patterns)}; set allow_patterns to the repo's "
            "data files."
            if patterns is not None
            else ""
        )
        raise ValueError(
            f"Dataset source {where} holds no data files (expected "
            f"{', '.join(DATA_SUFFIXES)}).{hint}"
        )
    for rel in data:
        _check_data_file(root / rel)


def _check_data_file(path: Path) -> None:
    """Cheap readability checks, so that a corrupt file fails here, not hours later."""
    fix = "Re-download it or fix the file; see the dataset section of the config."
    try:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif path.name.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                first = f.readline().strip()
            if first and path.name.endswith(".jsonl"):
                json.loads(first)
        elif path.name.endswith(".txt"):
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            # Incremental: the prefix may end inside a multi-byte character.
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except Exception as err:
        raise ValueError(f"Cannot read data file {str(path)!r} ({err}). {fix}") from err


def _provenance(
    kind: str,
    repo_id: str | None,
    commit: str | None,
    revision: str | None,
    local: Path | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": "local" if local is not None else "hub",
        "repo_id": repo_id,
        "revision": revision if local is None else None,
        "commit": commit,
        "pinned": local is None and is_commit_sha(revision),
        "local_source": str(local) if local is not None else None,
    }


def _materialise(
    root: Path, files: list[str], out_dir: str | os.PathLike, prov: dict[str, Any]
) -> dict[str, Any]:
    """Link (or copy) ``files`` from ``root`` into ``out_dir`` atomically; write provenance."""
    out = Path(out_dir)
    prov = {**prov, "path": str(out), "files": list(files)}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for rel in files:
            _link_or_copy(root / rel, tmp / rel)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2) + "\n")
    return prov


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link the real file (hub-cache snapshots are symlinks into ``blobs/``), else copy."""
    real = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(real, dst)
    except OSError:
        shutil.copy2(real, dst)
