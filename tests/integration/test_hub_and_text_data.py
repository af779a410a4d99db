"""Hub downloads (data/hub.py) and token chunks (data/text.py), without any network.

A tiny GPT-2 and a byte-level BPE tokenizer are built in-process and saved to a local folder.
Hub ids are exercised offline: against an empty cache (the clear error) and against a cache
filled by hand in ``huggingface_hub``'s layout (``<cache>/models--org--name/refs/main`` holding
the commit, ``snapshots/<commit>/`` holding the files), which is all that
``snapshot_download`` reads in offline mode.
"""

import copy
import json
import os
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xarray as xr
from huggingface_hub import constants as hub_constants

from interaction_basis import storage
from interaction_basis.data.hub import (
    PROVENANCE_FILE,
    HubDownloadError,
    UnpinnedRevisionWarning,
    download_dataset,
    download_model,
    is_commit_sha,
    read_provenance,
)
from interaction_basis.data.text import (
    load_held_out_texts,
    load_texts,
    load_tokenizer,
    pack_token_chunks,
    tokenize_texts,
    tokenize_to_chunks,
)
from interaction_basis.models.hf import load_hf_model
from lm_fixtures import EOS, tiny_tokenizer

SHA = "0123456789abcdef0123456789abcdef01234567"
STORIES = [
    "Once upon a time there was a little cat. The cat liked milk.",
    "The dog ran to the park.\nHe played with a red ball all day.",
    "She liked to read books about the sea and the big fish.",
    "Tom had a toy car. It was fast and blue.",
    "The sun was hot. The kids went to swim in the lake.",
    "A bird sang a song in the tree. Everyone was happy.",
]


@pytest.fixture(autouse=True)
def _offline_guard(tmp_path, monkeypatch):
    """No network (conftest sets HF_HUB_OFFLINE), and no lock files in ~/.cache from datasets."""
    import datasets

    assert hub_constants.is_offline_mode(), "HF_HUB_OFFLINE must be set before hub imports"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    fast = tiny_tokenizer(STORIES * 5, vocab_size=300)
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir, tokenizer):
    """A folder as save_pretrained writes it: config, safetensors, tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("model")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    return path


def _fill_cache(cache, repo_type, repo_id, files_from, *, ref="main", commit=SHA):
    """A hub cache entry in huggingface_hub's on-disk layout (what offline mode reads)."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / ref).write_text(commit)
    snapshot = folder / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    return snapshot


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


# --- hub: models ------------------------------------------------------------------------------


def test_is_commit_sha():
    assert is_commit_sha(SHA)
    assert not is_commit_sha("main")
    assert not is_commit_sha(SHA[:-1])
    assert not is_commit_sha(SHA.upper())
    assert not is_commit_sha(None)


def test_download_model_from_local_folder(model_dir, tmp_path):
    out = tmp_path / "resources" / "models" / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a local folder needs no revision: no warning
        prov = download_model(str(model_dir), None, out)
    assert prov["source"] == "local" and prov["commit"] is None and prov["repo_id"] is None
    assert prov["local_source"] == str(model_dir.resolve())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(prov["files"])
    assert read_provenance(out) == prov
    assert not list(out.parent.glob(".*partial*"))  # atomic: no temporary left behind

    original = load_hf_model(model_dir, torch.float64)
    copied = load_hf_model(out, torch.float64)
    tokens = torch.arange(10)[None]
    assert torch.equal(_logits(copied, tokens), _logits(original, tokens))
    assert load_tokenizer(out)("a little cat")["input_ids"]


def test_download_model_local_folder_is_validated(model_dir, tmp_path):
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(model_dir, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink()
    with pytest.raises(ValueError, match="no tokenizer files"):
        download_model(str(no_tok), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="revision 'main' is ignored for the local source"):
        prov = download_model(str(no_tok), "main", tmp_path / "out", require_tokenizer=False)
    assert "model.safetensors" in prov["files"] and prov["revision"] is None

    (no_tok / "model.safetensors").unlink()
    (no_tok / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json is missing; no weights"):
        download_model(str(no_tok), None, tmp_path / "out2", require_tokenizer=False)


def test_download_model_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_model(str(tmp_path / "nowhere"), None, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_model("./not/a/folder", None, tmp_path / "out")


def test_download_model_offline_empty_cache_names_id_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.warns(UnpinnedRevisionWarning, match="some/hub-id"):
        with pytest.raises(HubDownloadError) as info:
            download_model("some/hub-id", "main", tmp_path / "out")
    msg = str(info.value)
    for part in ("'some/hub-id'", "'main'", "HF_TOKEN", "snakemake --cores 1 all_downloads",
                 "HF_HUB_OFFLINE", "HF_HOME", "local"):  # fmt: skip
        assert part in msg, part
    assert isinstance(info.value, OSError)
    assert not (tmp_path / "out").exists()


def test_download_model_unpinned_revision_can_be_an_error(tmp_path):
    with pytest.raises(ValueError, match="40-hex commit SHA"):
        download_model("some/hub-id", "main", tmp_path / "out", require_pinned=True)
    with pytest.raises(ValueError, match="default branch"):
        download_model("some/hub-id", None, tmp_path / "out", require_pinned=True)


def test_download_model_from_filled_cache_offline(model_dir, tmp_path):
    cache = tmp_path / "cache"
    _fill_cache(cache, "model", "org/tiny-gpt2", model_dir)

    with pytest.warns(UnpinnedRevisionWarning):
        prov = download_model("org/tiny-gpt2", "main", tmp_path / "a", cache_dir=cache)
    assert prov["commit"] == SHA and prov["revision"] == "main" and not prov["pinned"]
    assert prov["source"] == "hub" and prov["repo_id"] == "org/tiny-gpt2"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pinned = download_model("org/tiny-gpt2", SHA, tmp_path / "b", cache_dir=cache)
    assert pinned["commit"] == SHA and pinned["pinned"]
    assert read_provenance(tmp_path / "b")["commit"] == SHA

    tokens = torch.arange(8)[None]
    reference = _logits(load_hf_model(model_dir), tokens)
    assert torch.equal(_logits(load_hf_model(tmp_path / "b"), tokens), reference)

    # A cache snapshot given as a local folder records its repo and commit too.
    local = download_model(str(cache / "models--org--tiny-gpt2" / "snapshots" / SHA), None,
                           tmp_path / "c")  # fmt: skip
    assert local["source"] == "local" and local["commit"] == SHA
    assert local["repo_id"] == "org/tiny-gpt2"

    # Another revision is not in the cache: the clear error, not a silent fallback.
    other = "f" * 40
    with pytest.raises(HubDownloadError, match=f"'org/tiny-gpt2' at revision '{other}'"):
        download_model("org/tiny-gpt2", other, tmp_path / "d", cache_dir=cache)


# --- hub: datasets ----------------------------------------------------------------------------


def _write_parquet(path, texts, column="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path,
                   row_group_size=2)  # fmt: skip


def test_download_dataset_local_file_and_folder(tmp_path):
    src = tmp_path / "corpus.parquet"
    _write_parquet(src, STORIES)
    prov = download_dataset(str(src), None, tmp_path / "ds")
    assert prov["files"] == ["corpus.parquet"] and prov["source"] == "local"
    assert list(load_texts(tmp_path / "ds")) == STORIES  # a folder of parquet: via datasets
    assert list(load_texts(tmp_path / "ds" / "corpus.parquet")) == STORIES

    folder = tmp_path / "txts"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n\ntwo\n")
    (folder / "b.txt").write_text("three\n")
    (folder / "notes.md").write_text("ignored")
    prov = download_dataset(str(folder), None, tmp_path / "ds_txt")
    assert prov["files"] == ["a.txt", "b.txt"]
    assert list(load_texts(tmp_path / "ds_txt")) == ["one", "two", "three"]


def test_download_dataset_bad_local_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_dataset(str(tmp_path / "missing.parquet"), None, tmp_path / "out")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match="Cannot read data file .*corrupt.parquet"):
        download_dataset(str(corrupt), None, tmp_path / "out")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text("{not json\n")
    with pytest.raises(ValueError, match="Cannot read data file .*bad.jsonl"):
        download_dataset(str(bad_jsonl), None, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no data")
    with pytest.raises(ValueError, match="holds no data files"):
        download_dataset(str(empty), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_dataset_offline_empty_cache(tmp_path):
    with pytest.warns(UnpinnedRevisionWarning):
        with pytest.raises(HubDownloadError, match="dataset 'org/corpus' at revision 'main'"):
            download_dataset("org/corpus", "main", tmp_path / "out", cache_dir=tmp_path / "c")


def test_download_dataset_from_filled_cache(tmp_path):
    repo = tmp_path / "repo"
    _write_parquet(repo / "data" / "train-00000-of-00001.parquet", STORIES[:4])
    _write_parquet(repo / "data" / "validation-00000-of-00001.parquet", STORIES[4:])
    (repo / "TinyStories-train.txt").write_text("a big text dump that must not be fetched\n")
    cache = tmp_path / "cache"
    _fill_cache(cache, "dataset", "org/corpus", repo)

    prov = download_dataset("org/corpus", SHA, tmp_path / "ds", cache_dir=cache)
    assert prov["commit"] == SHA and prov["pinned"]
    assert prov["files"] == [
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    assert (tmp_path / "ds" / PROVENANCE_FILE).is_file()  # hidden: not read as data
    assert list(load_texts(tmp_path / "ds", split="train")) == STORIES[:4]
    assert list(load_texts(tmp_path / "ds", split="validation")) == STORIES[4:]
    with pytest.raises(ValueError, match="'test' split"):
        list(load_texts(tmp_path / "ds", split="test"))

    with pytest.raises(ValueError, match="allow_patterns"):
        download_dataset("org/corpus", SHA, tmp_path / "ds2", cache_dir=cache,
                         allow_patterns=["*.csv"])  # fmt: skip


# --- documents --------------------------------------------------------------------------------


def test_load_texts_txt_blocks_separators_and_files(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\nfirst line\nsecond line\n\n\n  \nthird doc\r\n\nlast ü 😀")
    assert list(load_texts(path)) == ["first line\nsecond line", "third doc", "last ü 😀"]
    assert list(load_texts(path, max_documents=2)) == ["first line\nsecond line", "third doc"]
    assert list(load_texts(path, txt_separator=None)) == [path.read_text()]

    dump = tmp_path / "dump.txt"
    dump.write_text(f"Story one.\n\nMore of one.\n{EOS}\nStory two.\n{EOS}\n")
    assert list(load_texts(dump, txt_separator=EOS)) == ["Story one.\n\nMore of one.",
                                                         "Story two."]  # fmt: skip

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        list(load_texts(latin1))


def test_load_texts_parquet_jsonl_and_errors(tmp_path):
    _write_parquet(tmp_path / "c.parquet", [*STORIES[:2], None, STORIES[2]], column="story")
    assert list(load_texts(tmp_path / "c.parquet", text_column="story")) == STORIES[:3]
    with pytest.raises(ValueError, match=r"no column 'text'.*'story'"):
        load_texts(tmp_path / "c.parquet")

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES[:3]))
    assert list(load_texts(jsonl, max_documents=2)) == STORIES[:2]
    with pytest.raises(ValueError, match="line 1 has no key 'story'"):
        list(load_texts(jsonl, text_column="story"))

    (tmp_path / "ids.jsonl").write_text(json.dumps({"text": [1, 2, 3]}) + "\n")
    with pytest.raises(TypeError, match="must be strings"):
        list(load_texts(tmp_path / "ids.jsonl"))

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_texts(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="not in the local hub cache"):
        load_texts("org/never-downloaded")
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(ValueError, match="Unsupported data file"):
        load_texts(tmp_path / "x.docx")
    with pytest.raises(ValueError, match="max_documents"):
        load_texts(jsonl, max_documents=0)


def test_load_held_out_texts_are_the_last_documents(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
    held = load_held_out_texts(jsonl, n_documents=2, n_fit_documents=4)
    assert held == STORIES[-2:]
    assert not set(held) & set(load_texts(jsonl, max_documents=4))
    with pytest.raises(ValueError, match="has 6 documents.*disjoint from the first 5"):
        load_held_out_texts(jsonl, n_documents=2, n_fit_documents=5)


# --- tokens -----------------------------------------------------------------------------------


def _manual_stream(tokenizer, texts, eos=True):
    out = []
    for t in texts:
        out += tokenizer(t, add_special_tokens=False)["input_ids"]
        out += [tokenizer.eos_token_id] if eos else []
    return np.array(out)


def test_tokenize_texts_appends_eos_per_document(tokenizer):
    stream = tokenize_texts(iter(STORIES), tokenizer, batch_size=4)  # batches cross documents
    assert stream.dtype == np.int32
    np.testing.assert_array_equal(stream, _manual_stream(tokenizer, STORIES))
    eos_at = np.flatnonzero(stream == tokenizer.eos_token_id)
    assert len(eos_at) == len(STORIES) and eos_at[-1] == len(stream) - 1
    lengths = np.diff(np.concatenate([[-1], eos_at])) - 1
    assert lengths.tolist() == [len(tokenizer(s)["input_ids"]) for s in STORIES]
    assert tokenizer.decode(stream[: eos_at[0]]) == STORIES[0]

    plain = tokenize_texts(STORIES, tokenizer, append_eos=False)
    assert tokenizer.eos_token_id not in plain
    assert len(plain) == len(stream) - len(STORIES)
    assert tokenize_texts([], tokenizer).shape == (0,)


def test_pack_token_chunks_layout_and_boundaries():
    stream = np.arange(23, dtype=np.int32)  # (23 - 1) // 5 = 4 chunks; tokens 20..22 dropped
    every = pack_token_chunks(stream, 5, None)
    assert every.dtype == np.int64 and every.shape == (4, 6)
    for i, row in enumerate(every):
        np.testing.assert_array_equal(row, np.arange(5 * i, 5 * i + 6))
    # The label of each chunk's last token is the next chunk's first token.
    np.testing.assert_array_equal(every[:-1, -1], every[1:, 0])

    # Exactly on a boundary: the last full chunk has no label token and is dropped.
    assert pack_token_chunks(np.arange(20), 5, None).shape == (3, 6)
    assert pack_token_chunks(np.arange(21), 5, None).shape == (4, 6)

    sampled = pack_token_chunks(stream, 5, 3, seed=0)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(0))[:3].numpy()
    np.testing.assert_array_equal(sampled, every[perm])

    with pytest.raises(ValueError, match=r"Requested 5 chunks of n_ctx=5.*hold only 4"):
        pack_token_chunks(stream, 5, 5)
    with pytest.raises(ValueError, match="hold only 0"):
        pack_token_chunks(np.arange(5), 5, None)
    with pytest.raises(ValueError, match="n_ctx must be"):
        pack_token_chunks(stream, 0, 1)


def test_tokenize_to_chunks_seeded(tokenizer, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(STORIES * 3))
    stream = _manual_stream(tokenizer, STORIES * 3)
    n_ctx = 8
    n_available = (len(stream) - 1) // n_ctx

    chunks = tokenize_to_chunks(load_texts(corpus), tokenizer, n_ctx, 5, seed=0)
    assert chunks.shape == (5, n_ctx + 1)
    again = tokenize_to_chunks(load_texts(corpus), tokenizer, n_ctx, 5, seed=0)
    np.testing.assert_array_equal(chunks, again)
    other = tokenize_to_chunks(load_texts(corpus), tokenizer, n_ctx, 5, seed=1)
    assert not np.array_equal(chunks, other)

    perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(0))[:5].numpy()
    for row, i in zip(chunks, perm, strict=True):
        np.testing.assert_array_equal(row, stream[i * n_ctx : i * n_ctx + n_ctx + 1])

    everything = tokenize_to_chunks(load_texts(corpus), tokenizer, n_ctx, None)
    assert everything.shape == (n_available, n_ctx + 1)
    eos = tokenizer.eos_token_id
    assert (everything == eos).any()
    with pytest.raises(ValueError, match=f"hold only {n_available}"):
        tokenize_to_chunks(load_texts(corpus), tokenizer, n_ctx, n_available + 1)


def test_tokenize_parquet_corpus_matches_txt(tokenizer, tmp_path):
    _write_parquet(tmp_path / "c.parquet", STORIES)
    (tmp_path / "c.txt").write_text("\n\n".join(STORIES))
    a = tokenize_to_chunks(load_texts(tmp_path / "c.parquet"), tokenizer, 6, 4, seed=3)
    b = tokenize_to_chunks(load_texts(tmp_path / "c.txt"), tokenizer, 6, 4, seed=3)
    np.testing.assert_array_equal(a, b)


def test_tokenizer_without_eos_is_an_error(tokenizer):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos_token_id"):
        tokenize_texts(["x"], no_eos)
    assert len(tokenize_texts(["a cat"], no_eos, append_eos=False)) > 0


def test_load_tokenizer_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="all_downloads"):
        load_tokenizer(tmp_path / "nope")


# --- Zarr -------------------------------------------------------------------------------------


def test_token_chunks_zarr_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"fit": 7, "eval": 2, "stats": 20}
    chunks = {name: rng.integers(0, 50257, size=(n, 11)) for name, n in sizes.items()}
    attrs = {"tokenizer": "org/tiny", "model_revision": SHA, "seed": 0}
    path = tmp_path / "data" / "tokens.zarr"
    storage.write_token_chunks(path, chunks, attrs)
    back = storage.read_token_chunks(path)
    assert set(back) == set(chunks)
    for name, tokens in chunks.items():
        assert len(back[name]) == len(tokens)
        np.testing.assert_array_equal(back[name][:], tokens)
        np.testing.assert_array_equal(back[name][3:5], tokens[3:5])  # read on slicing
        assert back[name][:].dtype == np.int64
    assert storage.read_attrs(path) == {**attrs, "n_ctx": 10}
    store = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert store["stats"]["tokens"].encoding["chunks"] == (20, 11)  # whole rows per chunk
    assert sorted(os.listdir(path.parent)) == ["tokens.zarr"]  # nothing partial left over

    storage.write_token_chunks(path, {"fit": chunks["fit"][:2], "eval": chunks["eval"]}, {})
    assert set(storage.read_token_chunks(path)) == {"fit", "eval"}  # overwritten, not merged
    with pytest.raises(ValueError, match="share one width"):
        storage.write_token_chunks(path, {"fit": chunks["fit"], "eval": chunks["eval"][:, :5]}, {})
    storage.write_stats(tmp_path / "other.zarr", {}, {})
    with pytest.raises(ValueError, match="not a token store"):
        storage.read_token_chunks(tmp_path / "other.zarr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_token_chunks(tmp_path / "missing.zarr")
