"""Text corpora as packed token chunks for the language models (method §B.3, B.4, E).

Pipeline: :func:`load_texts` streams documents from a local source → :func:`tokenize_texts`
concatenates their tokens (EOS appended to each document) into one stream →
:func:`pack_token_chunks` cuts the stream into chunks and samples them with ``randperm(seed)``.
:func:`tokenize_to_chunks` runs the last two steps.

**Chunk layout.** The stream ``s`` (all documents' tokens, each followed by EOS, in corpus
order) is cut at multiples of ``n_ctx``. Chunk ``i`` is stored as the ``n_ctx + 1`` tokens
``s[i·n_ctx : (i+1)·n_ctx + 1]``: the model input is ``chunk[:, :-1]`` and the next-token
labels are ``chunk[:, 1:]``, so the label of a chunk's last token is the first token of the
next chunk (method §B.3). A chunk is available only if that label token exists, i.e. there are
``(len(s) - 1) // n_ctx`` chunks: the incomplete tail is dropped, and so is the last full chunk
when the stream ends exactly on a chunk boundary. Chunks cross document boundaries (an EOS
marks each), as in the reference.

**Sampling.** ``n_chunks`` chunks are the first ``n_chunks`` entries of
``torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))``, in that order
(method §F.12); ``n_chunks=None`` keeps every chunk in corpus order.

**Held-out data** (method §E, B.4): :func:`load_held_out_texts` returns the *last* documents
of the split and checks that they do not overlap the first ``n_fit_documents`` used to fit.

Sources (:func:`load_texts`), all read offline and streamed, so memory does not grow with the
corpus (only with the documents actually used):

- ``.txt``: documents separated by lines equal to ``txt_separator`` after stripping whitespace;
  the default ``""`` means blank lines, e.g. ``"<|endoftext|>"`` for the TinyStories dumps;
  ``None`` makes every file one document. A folder of only ``.txt`` files is read in sorted
  path order.
- ``.parquet`` / ``.jsonl`` (``.jsonl.gz``): one document per row, from ``text_column``.
- ``.json`` files and every other folder (e.g. a hub snapshot written by
  :func:`interaction_basis.data.hub.download_dataset`, whose README ``configs:`` map files to
  splits) go through ``datasets.load_dataset(..., split=split, streaming=True)``.
- A hub dataset id is looked up in the local hub cache only (never the network).
"""

import codecs
import gzip
import itertools
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

#: Snakemake target that runs the download rules (named in error messages).
DOWNLOAD_TARGET = "all_downloads"
#: Suffixes read without ``datasets``.
_OWN_SUFFIXES = (".txt", ".parquet", ".jsonl", ".jsonl.gz")
_DATA_SUFFIXES = (*_OWN_SUFFIXES, ".json", ".arrow", ".csv")
_TOKENIZE_BATCH = 1000


# --- tokenizer ----------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder (never the network).

    In transformers 5 this is a ``TokenizersBackend``; only its ``PreTrainedTokenizerBase``
    interface is used.
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    hint = (
        "Tokenizers load offline from the model folder: run the download rule first "
        f"(`snakemake --cores 1 {DOWNLOAD_TARGET}` on a node with internet), or point the "
        "model source at a folder that holds the tokenizer files."
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"Tokenizer folder {str(folder)!r} does not exist. {hint}")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"Could not load a tokenizer from {str(folder)!r}: {err}. {hint}") from err


# --- documents ----------------------------------------------------------------------------------


def load_texts(
    source: str | os.PathLike,
    *,
    split: str = "train",
    text_column: str = "text",
    max_documents: int | None = None,
    revision: str | None = None,
    txt_separator: str | None = "",
) -> Iterator[str]:
    """Stream the documents of a local corpus, in corpus order.

    Args:
        source: a data file, a folder (e.g. ``resources/datasets/<dataset>``), or a hub dataset
            id already in the local hub cache. See the module docstring for the formats.
        split: split name for folders and hub ids (a plain name: slicing such as
            ``"train[:99%]"`` is not available when streaming; use ``max_documents`` and
            :func:`load_held_out_texts`). Single files are one split and ignore it.
        text_column: column (parquet, datasets) or key (JSON lines) holding the text.
        max_documents: stop after this many documents (``None``: all), e.g. 100,000 for the
            TinyStories C/edge data (method §B.3).
        revision: hub ids only: the cached revision to read (``None``: ``main``).
        txt_separator: ``.txt`` only: the separator line (``""``: blank lines; ``None``: one
            document per file).

    Returns:
        An iterator of documents. Missing (null) texts are skipped.

    Raises:
        FileNotFoundError: the source does not exist (or a hub id is not in the cache).
        ValueError: an unknown file type, a corrupt file, an unknown split or a missing column
            (raised when iteration reaches it for streamed formats).
    """
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be >= 1 or None, got {max_documents}.")
    docs = _open_documents(source, split, text_column, revision, txt_separator)
    return itertools.islice(docs, max_documents)


def load_held_out_texts(
    source: str | os.PathLike,
    *,
    n_documents: int,
    n_fit_documents: int | None = None,
    split: str = "train",
    text_column: str = "text",
    revision: str | None = None,
    txt_separator: str | None = "",
) -> list[str]:
    """The last ``n_documents`` documents of the split: the LM evaluation data (method §E, B.4).

    One streaming pass over the split; memory holds ``n_documents`` documents.

    Args:
        n_documents: how many documents from the end (B.4: the last 100).
        n_fit_documents: the first documents used to fit (``max_documents`` of the fit data);
            an error is raised if the held-out documents would overlap them. ``None``: no check.
        Other arguments: as in :func:`load_texts`.

    Raises:
        ValueError: too few documents for a disjoint held-out set.
    """
    if n_documents < 1:
        raise ValueError(f"n_documents must be >= 1, got {n_documents}.")
    last: deque[str] = deque(maxlen=n_documents)
    total = 0
    for doc in _open_documents(source, split, text_column, revision, txt_separator):
        last.append(doc)
        total += 1
    needed = n_documents + (n_fit_documents or 0)
    if total < needed:
        disjoint = f" disjoint from the first {n_fit_documents}" if n_fit_documents else ""
        raise ValueError(
            f"The {split!r} split of {str(source)!r} has {total} documents, but "
            f"{n_documents} held-out documents{disjoint} need {needed}. Use fewer fit or "
            "held-out documents, or a larger corpus."
        )
    return list(last)


def _open_documents(
    source: str | os.PathLike,
    split: str,
    text_column: str,
    revision: str | None,
    txt_separator: str | None,
) -> Iterator[str]:
    """Validate ``source`` now (so errors come before iteration) and return its documents."""
    path = Path(source).expanduser()
    if path.is_file():
        name = path.name
        if name.endswith(".txt"):
            return _iter_txt([path], txt_separator)
        if name.endswith(".parquet"):
            return _iter_parquet(path, text_column)
        if name.endswith((".jsonl", ".jsonl.gz")):
            return _iter_jsonl(path, text_column)
        if name.endswith(".json"):
            return _iter_datasets(
                str(path), "train", text_column, None, data_files=str(path), builder="json"
            )
        raise ValueError(
            f"Unsupported data file {str(path)!r}: expected one of {', '.join(_DATA_SUFFIXES)}."
        )
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and p.name.endswith(_DATA_SUFFIXES)
        ]
        if not files:
            raise ValueError(
                f"Dataset folder {str(path)!r} holds no data files "
                f"({', '.join(_DATA_SUFFIXES)}). Run the dataset download rule "
                f"(`snakemake --cores 1 {DOWNLOAD_TARGET}`) or fix the path."
            )
        if all(p.name.endswith(".txt") for p in files):
            return _iter_txt(files, txt_separator)
        return _iter_datasets(str(path), split, text_column, None)
    text = str(source)
    looks_like_path = (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or text.endswith(_DATA_SUFFIXES)
    )
    if looks_like_path:
        raise FileNotFoundError(
            f"Dataset source {text!r} does not exist. Run the dataset download rule "
            f"(`snakemake --cores 1 {DOWNLOAD_TARGET}`) or fix the path in the config."
        )
    return _iter_datasets(_cached_dataset_snapshot(text, revision), split, text_column, text)


def _cached_dataset_snapshot(name: str, revision: str | None) -> str:
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(
            name, repo_type="dataset", revision=revision or "main", local_files_only=True
        )
    except Exception as err:
        raise FileNotFoundError(
            f"Hub dataset {name!r} at revision {revision or 'main'!r} is not in the local hub "
            f"cache ({type(err).__name__}). Texts are read offline: download it first with "
            f"`snakemake --cores 1 {DOWNLOAD_TARGET}` on a node with internet (or "
            "interaction_basis.data.hub.download_dataset), then pass the folder it writes."
        ) from err


def _iter_txt(files: list[Path], separator: str | None) -> Iterator[str]:
    for path in files:
        if separator is None:
            yield _read_text(path)
            continue
        lines: list[str] = []
        for line in _text_lines(path):
            if line.strip() == separator:
                if doc := _join(lines):
                    yield doc
                lines = []
            else:
                lines.append(line)
        if doc := _join(lines):
            yield doc


def _join(lines: list[str]) -> str:
    """The document of ``lines`` without leading and trailing blank lines."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[start:end])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({err}).") from err


def _text_lines(path: Path) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                pending += decoder.decode(block)
            except UnicodeDecodeError as err:
                raise ValueError(f"{str(path)!r} is not UTF-8 text ({err}).") from err
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line.rstrip("\r")
        try:
            pending += decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise ValueError(f"{str(path)!r} is not UTF-8 text ({err}).") from err
    if pending:
        yield pending.rstrip("\r")


def _iter_parquet(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as err:
        raise ValueError(f"Cannot read {str(path)!r} as parquet ({err}).") from err
    columns = pfile.schema_arrow.names
    if text_column not in columns:
        raise ValueError(
            f"{str(path)!r} has no column {text_column!r}; columns: {columns}. Set text_column."
        )
    return _parquet_rows(pfile, text_column, path)


def _parquet_rows(pfile: Any, text_column: str, path: Path) -> Iterator[str]:
    for batch in pfile.iter_batches(columns=[text_column], batch_size=1024):
        yield from _texts(batch.column(0).to_pylist(), path)


def _iter_jsonl(path: Path, text_column: str) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {number} is not JSON ({err}).") from err
            if not isinstance(row, dict) or text_column not in row:
                keys = list(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{str(path)!r} line {number} has no key {text_column!r} (found {keys}). "
                    "Set text_column."
                )
            yield from _texts([row[text_column]], path)


def _iter_datasets(
    path: str,
    split: str,
    text_column: str,
    hub_id: str | None,
    *,
    data_files: str | None = None,
    builder: str | None = None,
) -> Iterator[str]:
    import datasets

    where = hub_id or path
    try:
        if builder is not None:
            ds = datasets.load_dataset(builder, data_files=data_files, split=split, streaming=True)
        else:
            ds = datasets.load_dataset(path, split=split, streaming=True)
    except Exception as err:
        raise ValueError(
            f"Cannot open the {split!r} split of dataset {where!r} with datasets "
            f"({type(err).__name__}: {err}). Check split (a plain split name such as 'train') "
            "and the files in the folder."
        ) from err
    return _dataset_rows(ds, text_column, where)


def _dataset_rows(ds: Any, text_column: str, where: str) -> Iterator[str]:
    for row in ds:
        if text_column not in row:
            raise ValueError(
                f"Dataset {where!r} has no column {text_column!r}; columns: {list(row)}. "
                "Set text_column."
            )
        yield from _texts([row[text_column]], where)


def _texts(values: list[Any], where: str | Path) -> Iterator[str]:
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(
                f"Texts in {str(where)!r} must be strings, got {type(value).__name__}. Is "
                "text_column the text column (not pre-tokenised ids)?"
            )
        yield value


# --- tokens -------------------------------------------------------------------------------------


def tokenize_texts(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    append_eos: bool = True,
    batch_size: int = _TOKENIZE_BATCH,
) -> Int[np.ndarray, " stream"]:
    """Tokenise documents and concatenate them into one int32 stream, EOS after each.

    No other special tokens are added (``add_special_tokens=False``): GPT-2/GPT-Neo/GPT-NeoX
    tokenizers add none anyway, and documents are separated only by EOS.

    Args:
        texts: documents, consumed lazily in batches of ``batch_size``.
        tokenizer: a Hugging Face tokenizer (e.g. from :func:`load_tokenizer`).
        append_eos: append ``tokenizer.eos_token_id`` to every document (method §B.3).

    Raises:
        ValueError: ``append_eos`` with a tokenizer that has no EOS token.
    """
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError(
            "The tokenizer has no eos_token_id, so documents cannot be separated by EOS. Set "
            "the tokenizer's eos_token or pass append_eos=False."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    parts: list[np.ndarray] = []
    it = iter(texts)
    while batch := list(itertools.islice(it, batch_size)):
        ids = tokenizer(
            batch, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        tail = (eos,) if append_eos else ()
        count = sum(len(x) for x in ids) + len(tail) * len(ids)
        flat = itertools.chain.from_iterable(itertools.chain(x, tail) for x in ids)
        parts.append(np.fromiter(flat, dtype=np.int32, count=count))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def pack_token_chunks(
    stream: Int[np.ndarray, " stream"],
    n_ctx: int,
    n_chunks: int | None,
    *,
    seed: int = 0,
) -> Int[np.ndarray, "chunk token"]:
    """Cut a token stream into ``n_ctx + 1``-token chunks and sample them (module docstring).

    Args:
        stream: concatenated tokens (from :func:`tokenize_texts`).
        n_ctx: model context length (TinyStories 200, GPT-2 1024 in the paper).
        n_chunks: chunks to sample with ``randperm(seed)``; ``None``: all, in corpus order.
        seed: seed of the permutation.

    Returns:
        int64 array ``(n_chunks, n_ctx + 1)``: inputs ``[:, :-1]``, labels ``[:, 1:]``.

    Raises:
        ValueError: ``n_chunks`` larger than the available chunks, or bad sizes.
    """
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}.")
    n_available = max(0, (len(stream) - 1) // n_ctx)
    if n_chunks is not None and n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1 or None, got {n_chunks}.")
    wanted = n_available if n_chunks is None else n_chunks
    if n_available == 0 or wanted > n_available:
        raise ValueError(
            f"Requested {wanted if n_chunks is not None else 'all'} chunks of n_ctx={n_ctx} "
            f"(+1 label token), but the {len(stream)} tokens hold only {n_available}. Use more "
            "documents (max_documents), a smaller n_ctx or fewer chunks (n_chunks)."
        )
    if n_chunks is None:
        index = np.arange(n_available)
    else:
        perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
        index = perm[:n_chunks].numpy()
    # Row r of this strided view is stream[r·n_ctx : r·n_ctx + n_ctx + 1]; no copy until the
    # fancy index, so memory is the output only.
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(stream), n_ctx + 1)[::n_ctx]
    return windows[index].astype(np.int64)


def tokenize_to_chunks(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    n_ctx: int,
    n_chunks: int | None,
    *,
    append_eos: bool = True,
    seed: int = 0,
) -> Int[np.ndarray, "chunk token"]:
    """:func:`tokenize_texts` then :func:`pack_token_chunks` (method §B.3).

    For the TinyStories C/edge data: the first 100,000 train stories, the GPT-Neo tokenizer,
    ``n_ctx=200``, ``n_chunks=50_000``, ``seed=0``.

    Returns:
        int64 array ``(n_chunks, n_ctx + 1)``; see the module docstring for the layout.
    """
    stream = tokenize_texts(texts, tokenizer, append_eos=append_eos)
    return pack_token_chunks(stream, n_ctx, n_chunks, seed=seed)
