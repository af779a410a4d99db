"""Benchmark: the paper's language models at their real shapes, per section of a block and the head.

Random-weight models of the three shapes, built in-process from ``transformers`` configs with
random biases and LayerNorm affines (``tests/lm_fixtures.randomise_lm``, seed 0) and saved with
``save_pretrained`` as local models:

- ``gpt2``: GPT-2 small (12 layers, d_model 768, 12 heads, ``gelu_new``, context 1024, vocab
  50257), run as ``config/gpt2.yaml`` runs it;
- ``tinystories``: TinyStories-1M (GPT-Neo: 8 layers, d_model 64, 16 heads, d_mlp 256, global
  and local attention alternating, window 256, context 2048, vocab 50257), run as
  ``config/tinystories.yaml`` (200 tokens a chunk);
- ``pythia``: Pythia-70m (GPT-NeoX: 6 layers, d_model 512, 8 heads, d_mlp 2048, rotary on 25 %
  of each head, parallel residual, context 2048, vocab 50304). No config of the project runs it:
  its "paper run" is ``config/gpt2.yaml``'s (500 chunks, LIB and PCA) at 2048 tokens a chunk.

Each model is cut at the LayerNorm-split node layers (``hf_node_layers(kind="ln")``, the configs'
set; value biases folded) and run in float64 on ``--n-samples`` random chunks at the config's
context (``--n-ctx`` overrides it), with the config's sources and integration rule (one
stochastic source over positions, ``gradient``). For every section of block 0 (``ln1.0`` to
``ln1.1``, i.e. the MLP block into the next block's LayerNorm) and of the head (``ln_final`` to
``unembed``), in a fresh subprocess each (its peak RSS its own), the benchmark calls what the
basis and edge stages call per batch, ``jacobians.compute_m_dash_sum`` and
``jacobians.compute_edges_sum`` on all samples at once, with random full-rank ``C_out``, ``C_in``
(the stages' truncated bases are at most this wide: an upper bound on the work), and gives:

- the path taken: the closed form's class (``CausalAttention``, ``LayerNormIn``, …) or
  ``generic`` (``jacobians``' autograd fallback), as observed: whether ``jacobians`` called the
  section's own closed form (within the memory budget) on a dry run over fake tensors, and
  again in the measured run;
- the FLOP count of M′ and of the edges (``torch.utils.flop_counter``: matrix products only,
  the in-place ones too: ``_common.flop_counter``; counted in the timed run; the counter adds
  1-5 % to the time);
- CPU seconds (``time.process_time``, all threads) and wall seconds of each;
- peak RSS: of the process (model and activations included, as in a stage) and of each of M′
  and the edges above the RSS before it (``/proc/self/clear_refs``).

A section that takes the generic path is not run unless ``--run-generic`` is given (GPT-2's
attention at 1024 tokens took 1,650 CPU-s for M′ and was killed for memory in its edges): its
FLOP count then comes from running the generic algorithm on fake tensors
(``torch._subclasses.FakeTensorMode``: shapes only, no data, no memory), and its row says so.
``--plan`` reports every section's path and FLOP count that way without running anything heavy
(seconds per shape; the model is still built, about 2 GB for GPT-2).

The summary extrapolates to each config's full run: M′ of every section for LIB, the edges for
every method of ``basis.methods`` (LIB and PCA; PCA's basis needs no M′), block-0 sections times
the number of blocks plus the head, scaled from ``--n-samples`` to the config's chunks. It gives
FLOP, CPU time at the rate measured here, and GPU time at ``--gpu-tflops`` (H100 SXM, FP64 tensor
cores: 67 TFLOP/s peak) times ``--gpu-fraction`` (a third sustained by default: products of a
few thousand rows and columns, chunked, with elementwise work between them), next to the
reference implementation's figures (GPT-2 small: 9 samples at 1024 tokens in 11 min and 68 GB of
GPU memory; 500 samples in about 10 h). Extraction and the Grams (forward passes) are left out.
At an ``--n-ctx`` other than the config's the extrapolation scales samples, not tokens, and is
marked as such. Output: a markdown table (``docs/performance.md``) and ``--json``.

Usage: ``python benchmarks/bench_lm_shapes.py [--shapes gpt2,tinystories,pythia] [--n-ctx N]
[--n-samples 1] [--threads 1] [--budget-mb MB] [--plan] [--run-generic] [--sections attn_in,…]
[--vocab V] [--timeout S] [--max-memory-gb G] [--workdir DIR] [--json out.json]``. ``--vocab``
shrinks the vocabulary (only the embedding and unembedding are larger with the real one; no
section's work depends on it) for quick checks on a small machine. ``--timeout`` and
``--max-memory-gb`` (the address space of each child, ``RLIMIT_AS``: a section that needs more
fails with an allocation error instead of taking a shared machine down) bound every child; a
section that fails keeps the path and FLOP of its dry run and the others go on. A ``--workdir``
keeps the models and activations, and a later run with the same ``--n-ctx``, ``--vocab`` and
``--n-samples`` reuses them (e.g. to rerun one of ``--sections``).
"""

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from _common import (
    current_rss_mib,
    flop_counter,
    phase_peak_rss_mib,
    reset_peak_rss,
    run_child,
)

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("gpt2", "tinystories", "pythia")
TITLES = {
    "gpt2": "GPT-2 small",
    "tinystories": "TinyStories-1M (GPT-Neo)",
    "pythia": "Pythia-70m (GPT-NeoX)",
}
#: The project config each shape's full run follows; Pythia has none: GPT-2's at its context.
PAPER_CONFIG = {"gpt2": "gpt2.yaml", "tinystories": "tinystories.yaml", "pythia": "gpt2.yaml"}
PYTHIA_CONTEXT = 2048
#: The reference implementation's figures (issue 26), where it reports any.
REFERENCE = {
    "gpt2": "9 samples × 1024 tokens: 11 min, 68 GB GPU memory; 500 samples: about 10 h (GPU)"
}
#: Block 0's sections (by their input node layer) and the head's; the block's last section
#: is its MLP into the next block's first LayerNorm (the last block's: into ``ln_final``).
BLOCK = ("ln1.0", "ln1_out.0", "attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0")
HEAD = ("ln_final", "ln_final_out")
TARGET_BLOCK_PEAK_MIB = 16 * 1024
TARGET_GPT2_FLOP = 1e17


# --- the models ------------------------------------------------------------------------------


def _hf_config(shape: str, vocab: int | None):
    """The transformers config of a shape (the published models' settings)."""
    from transformers import GPT2Config, GPTNeoConfig, GPTNeoXConfig

    if shape == "gpt2":
        v = vocab or 50257
        return GPT2Config(
            vocab_size=v, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
            activation_function="gelu_new", bos_token_id=v - 1, eos_token_id=v - 1,
        )  # fmt: skip
    if shape == "tinystories":
        v = vocab or 50257
        return GPTNeoConfig(
            vocab_size=v, max_position_embeddings=2048, hidden_size=64, num_layers=8,
            num_heads=16, attention_types=[[["global", "local"], 4]], window_size=256,
            intermediate_size=None, activation_function="gelu_new", bos_token_id=v - 1,
            eos_token_id=v - 1,
        )  # fmt: skip
    v = vocab or 50304
    return GPTNeoXConfig(
        vocab_size=v, max_position_embeddings=PYTHIA_CONTEXT, hidden_size=512,
        num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


def _random_model(shape: str, vocab: int | None):
    """The shape's model with random weights, biases and LayerNorm affines (seed 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from lm_fixtures import randomise_lm

    torch.manual_seed(0)
    return randomise_lm(AutoModelForCausalLM.from_config(_hf_config(shape, vocab)), seed=0)


def _paper_run(shape: str) -> dict:
    """What the shape's full run does (from its project config): chunks, tokens, methods,
    sources, integration rule, node layers."""
    import yaml

    from interaction_basis.config import validate_config

    path = REPO / "config" / PAPER_CONFIG[shape]
    exp = validate_config(yaml.safe_load(path.read_text())).experiments[0]
    run = dict(
        config=f"config/{PAPER_CONFIG[shape]}",
        n_ctx=exp.model.text.n_ctx,
        n_samples=exp.model.text.n_samples,
        methods=list(exp.basis.methods),
        basis_n_pos=exp.basis.sources.n_pos,
        basis_n_hidden=exp.basis.sources.n_hidden,
        edges_n_pos=exp.edges.n_sources_pos,
        basis_integration=[exp.basis.integration.method, exp.basis.integration.n_intervals],
        edges_integration=[exp.edges.integration.method, exp.edges.integration.n_intervals],
        fold_value_biases=exp.model.hub.fold_value_biases,
        node_layers=list(exp.extract.node_layers or []),
    )
    if shape == "pythia":
        run.update(config=f"config/{PAPER_CONFIG[shape]} at {PYTHIA_CONTEXT} tokens a chunk")
        run.update(n_ctx=PYTHIA_CONTEXT, node_layers=[])
    return run


def _sectioned(hf, run: dict):
    """The LayerNorm-split sectioned model, as the config builds it."""
    from interaction_basis.models.hf import build_hf_sections, hf_node_layers

    layers = hf_node_layers(hf, "ln")
    if run["node_layers"] and run["node_layers"] != layers:
        raise SystemExit(f"{run['config']}'s node layers are not the LayerNorm-split set {layers}")
    return build_hf_sections(hf, layers, fold_value_biases=run["fold_value_biases"])


def _chosen(layers, wanted: list[str] | None) -> list[int]:
    """Indices of block 0's and the head's sections (``wanted``: by input layer, ``.0`` left
    off), in forward order."""
    names = [*BLOCK, *HEAD]
    if wanted:
        unknown = set(wanted) - {n.removesuffix(".0") for n in names}
        if unknown:
            raise SystemExit(f"unknown --sections {sorted(unknown)}; use ln1, ln1_out, attn_in, "
                             "ln2, ln2_out, mlp_in, ln_final, ln_final_out")  # fmt: skip
        names = [n for n in names if n.removesuffix(".0") in wanted]
    return [layers.index(n) for n in names]


# --- one section -----------------------------------------------------------------------------


def _sources(run: dict):
    from interaction_basis.lib.jacobians import Integration, Sources

    return dict(
        basis=(Sources(run["basis_n_pos"], run["basis_n_hidden"]),
               Integration(*run["basis_integration"])),
        edges=(Sources(run["edges_n_pos"]), Integration(*run["edges_integration"])),
    )  # fmt: skip


PHASES = ("m_dash", "edges")
#: The closed-form method that serves each phase when a section has one.
CLOSED_METHOD = {"m_dash": "compute_m_dash_sum", "edges": "compute_edges_sum"}


@contextmanager
def _observed(section):
    """The phases that ``section``'s own closed form served inside the block: ``jacobians``
    calls the section's method where its closed form applies (within the memory budget), and
    takes the generic path otherwise. Observed, not predicted, so that the benchmark follows
    whatever rule ``jacobians`` applies."""
    served: set[str] = set()
    patched = []
    for phase, method in CLOSED_METHOD.items():
        bound = getattr(section, method, None)
        if bound is None:
            continue

        def wrapper(*a, _bound=bound, _phase=phase, **k):
            served.add(_phase)
            return _bound(*a, **k)

        try:
            setattr(section, method, wrapper)
        except AttributeError:
            continue
        patched.append(method)
    try:
        yield served
    finally:
        for method in patched:
            delattr(section, method)


def _path(section, served: set[str], phase: str) -> str:
    return type(section).__name__ if phase in served else "generic"


def _operands(d_in: int, d_out: int, fake: bool):
    """Random full-rank ``C_out`` and ``C_in`` with its inverse (empty ones on fake tensors)."""
    import torch

    f64 = torch.float64
    if fake:
        return tuple(torch.empty(n, n, dtype=f64) for n in (d_out, d_in, d_in))
    gen = torch.Generator().manual_seed(0)
    c_out = torch.randn(d_out, d_out, generator=gen, dtype=f64)
    c_in = torch.randn(d_in, d_in, generator=gen, dtype=f64)
    return c_out, c_in, torch.linalg.inv(c_in)


def _call(phase: str, section, x, ops, run: dict):
    """M′ or the edges of one section, as the stages call them on one batch."""
    from interaction_basis.lib import jacobians
    from interaction_basis.lib.fit import batch_generator

    c_out, c_in, c_in_pinv = ops
    sources, rule = _sources(run)["basis" if phase == "m_dash" else "edges"]
    common = dict(integration=rule, sources=sources, generator=batch_generator(0, 0))
    if phase == "m_dash":
        return jacobians.compute_m_dash_sum(section, x, c_out, **common)
    return jacobians.compute_edges_sum(section, x, c_in, c_in_pinv, c_out, **common)


def _fake_run(section, shape: tuple[int, ...], d_out: int, run: dict) -> dict:
    """Path and FLOP of M′ and the edges from running them on fake tensors (shapes only: no
    data, no memory, seconds)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from interaction_basis.lib import jacobians

    out: dict = {}
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(shape, dtype=torch.float64)
            ops = _operands(shape[-1], d_out, True)
            for phase in PHASES:
                with _observed(section) as served, flop_counter() as counter:
                    _call(phase, section, x, ops, run)
                out[phase] = dict(
                    flop=counter.get_total_flops(), path=_path(section, served, phase)
                )
    except Exception as err:  # noqa: BLE001 - data-dependent code cannot run on fake tensors
        out["fake_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    # The generic path caches what it probed per section (e.g. whether it can be vmapped);
    # probes on fake tensors must not decide the real run.
    getattr(jacobians, "_CACHE", {}).pop(section, None)
    return out


def _measure(section, x, d_out: int, run: dict) -> dict:
    """M′ and the edges on real data: path, FLOP, CPU and wall seconds, peak RSS above the
    RSS before each."""
    import torch

    out: dict = {}
    ops = _operands(x.shape[-1], d_out, False)
    resets = True
    for phase in PHASES:
        gc.collect()
        before = current_rss_mib()
        resets = reset_peak_rss() and resets
        t0, c0 = time.perf_counter(), time.process_time()
        with _observed(section) as served, flop_counter() as counter:
            result = _call(phase, section, x, ops, run)
        out[phase] = dict(
            path=_path(section, served, phase),
            flop=counter.get_total_flops(),
            cpu_seconds=time.process_time() - c0,
            wall_seconds=time.perf_counter() - t0,
            peak_rss_mib=phase_peak_rss_mib(),
            rss_before_mib=before,
            finite=bool(torch.isfinite(result).all()),
        )
        del result
    out["phase_peaks_reset"] = resets
    return out


def _paths(row: dict) -> None:
    """The row's ``path`` and ``edges_path`` from its phases ('unknown' where none ran)."""
    row["path"] = row.get("m_dash", {}).get("path", "unknown")
    row["edges_path"] = row.get("edges", {}).get("path", "unknown")


def _section_child(args: argparse.Namespace) -> dict:
    """One section in this (fresh) process: path, FLOP, times and peak RSS."""
    import torch

    from interaction_basis.models.hf import load_hf_model

    torch.set_num_threads(args.threads)
    work = Path(args.workdir) / args.shape
    meta = json.loads((work / "meta.json").read_text())
    run = meta["run"]
    hf = load_hf_model(work / "model")
    model = _sectioned(hf, run)
    del hf
    name, nxt = model.node_layers[args.index], model.node_layers[args.index + 1]
    section = model.sections[args.index]
    x = torch.load(work / "acts.pt")[name]
    d_out = meta["widths"][nxt]
    gc.collect()
    setup_peak = phase_peak_rss_mib()  # the process's peak so far: loading and building
    out = dict(section=f"{name} → {nxt}", shape=list(x.shape), d_out=d_out)
    with _budget(args):
        out["budget_bytes"] = _budget_bytes()
        out["rss_setup_mib"] = current_rss_mib()
        # A dry run on fake tensors first: which path each phase takes, before risking it.
        out.update(_fake_run(section, tuple(x.shape), d_out, run))
        _paths(out)
        if "generic" in (out["path"], out["edges_path"]) and not args.run_generic:
            out["skipped"] = True
        else:
            # What is known so far, should the run be killed (the parent reads the last line).
            print(json.dumps({**out, "skipped": False}), flush=True)
            out.update(_measure(section, x, d_out, run), skipped=False)
            _paths(out)
    out["setup_peak_rss_mib"] = setup_peak
    out["process_peak_rss_mib"] = max(
        [setup_peak] + [out[p]["peak_rss_mib"] for p in PHASES if "peak_rss_mib" in out.get(p, {})]
    )
    return out


def _budget(args: argparse.Namespace):
    """``lib.budget.limit`` at ``--budget-mb``; the library's default without it."""
    from contextlib import nullcontext

    from interaction_basis.lib import budget

    return nullcontext() if args.budget_mb is None else budget.limit(int(args.budget_mb * 2**20))


def _budget_bytes() -> int:
    from interaction_basis.lib import budget

    return budget.budget_bytes()


# --- preparation and plan ----------------------------------------------------------------------


def _widths(model, n_ctx: int) -> dict[str, int]:
    """Every node layer's width, from a forward pass over two tokens."""
    import torch

    with torch.no_grad():
        x = model.embed(torch.zeros(1, min(2, n_ctx), dtype=torch.long))
        widths = {model.node_layers[0]: x.shape[-1]}
        for name, section in zip(model.node_layers[1:], model.sections, strict=True):
            x = section(x)
            widths[name] = x.shape[-1]
    return widths


def _prepared_key(args: argparse.Namespace) -> dict:
    """What the prepared model and activations depend on."""
    return dict(n_ctx=args.n_ctx, vocab=args.vocab, n_samples=args.n_samples)


def _prepare_child(args: argparse.Namespace) -> dict:
    """Save the random model, run it on random chunks and keep the inputs of the chosen
    sections (``acts.pt``), with the node layers' widths and the run's settings."""
    import torch

    from interaction_basis.models.hf import load_hf_model

    torch.set_num_threads(args.threads)
    work = Path(args.workdir) / args.shape
    work.mkdir(parents=True, exist_ok=True)
    run = _paper_run(args.shape)
    t0 = time.perf_counter()
    _random_model(args.shape, args.vocab).save_pretrained(work / "model")
    gc.collect()
    hf = load_hf_model(work / "model")
    n_ctx = args.n_ctx or run["n_ctx"]
    vocab = hf.config.vocab_size
    model = _sectioned(hf, run)
    del hf
    keep = {model.node_layers[i] for i in _chosen(model.node_layers, None)}
    tokens = torch.randint(
        0, vocab, (args.n_samples, n_ctx), generator=torch.Generator().manual_seed(0)
    )
    acts = {}
    with torch.no_grad():
        x = model.embed(tokens)
        for name, section in zip(model.node_layers, model.sections, strict=False):
            if name in keep:
                acts[name] = x.clone()
            if len(acts) == len(keep):
                break
            x = section(x)
    torch.save(acts, work / "acts.pt")
    meta = dict(
        run=run, n_ctx=n_ctx, vocab=vocab, n_samples=args.n_samples, key=_prepared_key(args),
        node_layers=list(model.node_layers), widths=_widths(model, n_ctx),
        n_blocks=sum(n.startswith("ln1.") for n in model.node_layers),
        load_peak_rss_mib=phase_peak_rss_mib(), seconds=time.perf_counter() - t0,
    )  # fmt: skip
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def _plan_child(args: argparse.Namespace) -> dict:
    """Path and FLOP of every chosen section from fake tensors: nothing heavy runs."""
    import torch

    torch.set_num_threads(args.threads)
    run = _paper_run(args.shape)
    t0 = time.perf_counter()
    hf = _random_model(args.shape, args.vocab)  # build_hf_sections casts to float64
    n_ctx = args.n_ctx or run["n_ctx"]
    model = _sectioned(hf, run)
    del hf
    widths = _widths(model, n_ctx)
    sections = []
    with _budget(args):
        for i in _chosen(model.node_layers, args.sections):
            name, nxt = model.node_layers[i], model.node_layers[i + 1]
            shape = (args.n_samples, n_ctx, widths[name])
            row = dict(section=f"{name} → {nxt}", shape=list(shape), d_out=widths[nxt])
            c0 = time.perf_counter()
            row.update(_fake_run(model.sections[i], shape, widths[nxt], run), skipped=True)
            _paths(row)
            row["count_seconds"] = time.perf_counter() - c0
            sections.append(row)
        budget = _budget_bytes()
    return dict(
        run=run, n_ctx=n_ctx, n_samples=args.n_samples, sections=sections, budget_bytes=budget,
        n_blocks=sum(n.startswith("ln1.") for n in model.node_layers),
        seconds=time.perf_counter() - t0, peak_rss_mib=phase_peak_rss_mib(),
    )  # fmt: skip


def _child_cmd(args: argparse.Namespace, child: str, shape: str, index: int = -1) -> list[str]:
    cmd = [sys.executable, __file__, "--child", child, "--shape", shape, "--index", str(index)]
    cmd += ["--workdir", args.workdir, "--threads", str(args.threads)]
    cmd += ["--n-samples", str(args.n_samples)]
    for flag in ("n_ctx", "vocab", "budget_mb", "max_memory_gb"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.sections:
        cmd += ["--sections", ",".join(args.sections)]
    return cmd + (["--run-generic"] if args.run_generic else [])


def _bench_shape(args: argparse.Namespace, shape: str) -> dict:
    """Plan, or prepare then run every chosen section in its own process."""
    if args.plan:
        result = run_child(_child_cmd(args, "plan", shape), timeout=args.timeout)
        for row in result["sections"]:
            print(f"{shape} {row['section']}: {row['path']}", file=sys.stderr, flush=True)
        return result
    prepared = Path(args.workdir) / shape / "meta.json"
    meta = json.loads(prepared.read_text()) if prepared.is_file() else {}
    if meta.get("key") == _prepared_key(args):  # --workdir of an earlier run: reuse
        print(f"{shape}: reusing the model and activations in {prepared.parent}", file=sys.stderr)
    else:
        meta = run_child(_child_cmd(args, "prepare", shape), timeout=args.timeout)
        print(f"{shape}: model and activations ready in {meta['seconds']:.0f} s", file=sys.stderr)
    sections = []
    for index in _chosen(meta["node_layers"], args.sections):
        row = run_child(_child_cmd(args, "section", shape, index), timeout=args.timeout,
                        tolerate=True)  # fmt: skip
        layers = meta["node_layers"]
        row.setdefault("section", f"{layers[index]} → {layers[index + 1]}")
        sections.append(row)
        print(f"{shape} {row['section']}: {_brief(row)}", file=sys.stderr, flush=True)
    if args.temporary_workdir:  # one shape's model at a time on disk (GPT-2: 0.5 GB)
        shutil.rmtree(Path(args.workdir) / shape, ignore_errors=True)
    budget = next((r["budget_bytes"] for r in sections if "budget_bytes" in r), None)
    return dict(
        run=meta["run"], n_ctx=meta["n_ctx"], n_samples=meta["n_samples"], sections=sections,
        n_blocks=meta["n_blocks"], budget_bytes=budget, prepare_seconds=meta["seconds"],
    )  # fmt: skip


def _brief(row: dict) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    cpu = sum(row.get(p, {}).get("cpu_seconds", 0.0) for p in ("m_dash", "edges"))
    what = "not run" if row["skipped"] else f"{cpu:.1f} CPU-s"
    return f"{row['path']}, {what}, peak RSS {row.get('process_peak_rss_mib', 0):.0f} MiB"


# --- summary -----------------------------------------------------------------------------------


def _multiplicity(section: str, n_blocks: int) -> int:
    """How often the full model has a section like this one (block 0's: once per block)."""
    return n_blocks if section.split(" ")[0].endswith(".0") else 1


def _extrapolate(result: dict, args: argparse.Namespace) -> dict:
    """The config's full run from the measured sections: M′ once (LIB), edges per method."""
    run = result["run"]
    methods = run["methods"]
    m_dash_runs = 1 if "lib" in methods else 0
    scale = run["n_samples"] / result["n_samples"]
    flop = cpu = measured_flop = 0.0
    missing_flop, missing_cpu, generic, unknown = [], [], [], []
    for row in result["sections"]:
        mult = _multiplicity(row["section"], result["n_blocks"]) * scale
        if "generic" in (row.get("path"), row.get("edges_path")):
            generic.append(row["section"])
        elif "error" in row and "path" not in row:
            unknown.append(row["section"])
        for phase, times in (("m_dash", m_dash_runs), ("edges", len(methods))):
            got = row.get(phase, {})  # a failed run keeps the FLOP of its dry run
            if "flop" in got:
                flop += mult * times * got["flop"]
            elif row["section"] not in missing_flop:
                missing_flop.append(row["section"])
            if "cpu_seconds" in got:
                cpu += mult * times * got["cpu_seconds"]
                measured_flop += mult * times * got["flop"]
            elif row["section"] not in missing_cpu:
                missing_cpu.append(row["section"])
    gpu_rate = args.gpu_tflops * 1e12 * args.gpu_fraction
    block_peak = [
        r["process_peak_rss_mib"] for r in result["sections"]
        if r["section"].split(" ")[0].endswith(".0") and "cpu_seconds" in r.get("edges", {})
    ]  # fmt: skip
    return dict(
        chunks=run["n_samples"], n_ctx=run["n_ctx"], methods=methods, n_blocks=result["n_blocks"],
        flop=flop, cpu_seconds=cpu, measured_flop=measured_flop, gpu_seconds=flop / gpu_rate,
        flop_missing=missing_flop, cpu_missing=missing_cpu, generic_sections=generic,
        path_unknown=unknown,
        context_as_config=result["n_ctx"] == run["n_ctx"],
        partial=bool(args.sections), block_peak_rss_mib=max(block_peak, default=None),
    )  # fmt: skip


def _g(flop: float | None) -> str:
    return "–" if flop is None else f"{flop / 1e9:,.3g}"


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:,.3g} h"


def _at_least(value: float, missing: list, show) -> str:
    """``value`` shown, as a lower bound where some sections are missing from it."""
    if not missing:
        return show(value)
    return f"≥ {show(value)}" if value else "–"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _rss_cell(setup: float | None, m_dash: float | None, edges: float | None) -> str:
    return f"{_mib(setup)}; +{_mib(m_dash)}, +{_mib(edges)}"


def _above(m: dict, e: dict, row: dict) -> list[float | None]:
    """The peak RSS of M′ and of the edges above the RSS before each."""
    if not row.get("phase_peaks_reset"):
        return [None, None]
    return [
        p["peak_rss_mib"] - p["rss_before_mib"] if p.get("rss_before_mib") is not None else None
        for p in (m, e)
    ]


def _section_rows(shape: str, result: dict, plan: bool) -> list[str]:
    rows = []
    for r in result["sections"]:
        m, e = r.get("m_dash", {}), r.get("edges", {})
        path = r.get("path", "unknown")
        if r.get("edges_path", path) != path:
            path += f" / {r['edges_path']}"
        notes = [] if plan or not r.get("skipped") else ["not run"]
        if "error" in r:
            notes.append(f"failed: {r['error']}")
        if "fake_error" in r:
            notes.append(f"FLOP not countable on fake tensors: {r['fake_error']}")
        path += f" ({'; '.join(notes)})" if notes else ""
        cpu = m.get("cpu_seconds", 0.0) + e.get("cpu_seconds", 0.0)
        rate = (m.get("flop", 0) + e.get("flop", 0)) / cpu / 1e9 if cpu else None
        run = not r.get("skipped", True) and "error" not in r
        cells = [
            TITLES[shape], r["section"], path, _g(m.get("flop")), _g(e.get("flop")),
            f"{m['cpu_seconds']:.2f}" if "cpu_seconds" in m else "–",
            f"{e['cpu_seconds']:.2f}" if "cpu_seconds" in e else "–",
            f"{rate:.1f}" if rate else "–",
            f"{r['process_peak_rss_mib']:,.0f}" if run else "–",
            _rss_cell(r.get("rss_setup_mib"), *_above(m, e, r)) if run else "–",
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _summary_row(shape: str, result: dict, ext: dict, args: argparse.Namespace) -> str:
    run = result["run"]
    methods = " + ".join(m.upper() for m in ext["methods"])
    what = f"{ext['chunks']:,} × {ext['n_ctx']} tokens, {methods}, {ext['n_blocks']} blocks"
    what += f" ({run['config']})"
    flags = []
    if ext["flop_missing"]:
        flags.append(f"without {', '.join(ext['flop_missing'])}")
    if not ext["context_as_config"]:
        flags.append(f"at {result['n_ctx']} tokens, not the config's: samples scaled, not tokens")
    if ext["partial"]:
        flags.append("only the --sections chosen")
    flop = f"{ext['flop']:.2g}" + (" (" + "; ".join(flags) + ")" if flags else "")
    if args.plan:
        cpu = "– (plan)"
    else:
        cpu = _at_least(ext["cpu_seconds"], ext["cpu_missing"], lambda v: f"{v / 3600:,.3g} h")
        if ext["cpu_seconds"]:  # how near the GEMM rate the measured sections ran
            cpu += f" at {ext['measured_flop'] / ext['cpu_seconds'] / 1e9:.3g} GFLOP/s"
        if ext["cpu_missing"]:
            cpu += f" (not run: {', '.join(ext['cpu_missing'])})"
    gpu = _at_least(ext["gpu_seconds"], ext["flop_missing"], _hours)
    return f"| {TITLES[shape]} | {what} | {flop} | {cpu} | {gpu} | {REFERENCE.get(shape, '–')} |"


def _targets(results: dict, extrapolated: dict) -> list[str]:
    generic = [
        f"{shape}: {', '.join(e['generic_sections'])}"
        for shape, e in extrapolated.items()
        if e["generic_sections"]
    ]
    unknown = [s for e in extrapolated.values() for s in e["path_unknown"]]
    verdict = "NO: " + "; ".join(generic) if generic else ("unknown" if unknown else "yes")
    if unknown:
        verdict += f" (no path known for {', '.join(unknown)})"
    lines = [f"no section takes the generic path: {verdict}"]
    if "gpt2" not in extrapolated:
        return lines
    ext = extrapolated["gpt2"]
    at = "" if ext["context_as_config"] else f" at {results['gpt2']['n_ctx']} tokens"
    off = None if ext["context_as_config"] else "not judged (not at the config's context)"
    peak = ext["block_peak_rss_mib"]
    if peak is None:
        lines.append("GPT-2 block at ≤ 16 GiB peak RSS: not measured (no block section run)")
    else:
        verdict = off or ("yes" if peak <= TARGET_BLOCK_PEAK_MIB else "NO")
        lines.append(f"GPT-2 block at ≤ 16 GiB peak RSS: {verdict}, {peak / 1024:.1f} GiB{at}"
                     + (" (not every section ran)" if ext["cpu_missing"] else ""))  # fmt: skip
    incomplete = ext["flop_missing"] or ext["partial"]
    verdict = "incomplete" if incomplete else ("yes" if ext["flop"] <= TARGET_GPT2_FLOP else "NO")
    verdict = off or verdict
    lines.append(f"GPT-2 config ≤ 1e17 FLOP: {verdict}, {ext['flop']:.2g}{at}")
    return lines


def _report(results: dict, args: argparse.Namespace, load: tuple[float, float]) -> dict:
    budget = next((r["budget_bytes"] for r in results.values() if r.get("budget_bytes")), None)
    head = (
        f"float64, {args.n_samples} sample(s) a shape, {args.threads} thread(s), memory budget "
        f"{'–' if budget is None else f'{budget / 2**20:,.0f} MiB'}"
        f"{'' if args.budget_mb else ' (the library default)'}, LayerNorm-split node layers, "
        f"the configs' sources (one over positions) and integration rule; load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after"
    )
    print(f"\n{'Plan (fake tensors: nothing run)' if args.plan else 'Measured'}: {head}\n")
    print("| model | section | path | GFLOP M′ | GFLOP edges | CPU s M′ | CPU s edges | "
          "GFLOP/s | peak RSS MiB | RSS after setup; M′, edges above it (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, result in results.items():
        print("\n".join(_section_rows(shape, result, args.plan)))
    rate = args.gpu_tflops * args.gpu_fraction
    print(
        f"\nFull runs, extrapolated (M′ of every section for LIB, edges for every method; "
        f"extraction and Grams left out; GPU at {rate:.3g} TFLOP/s FP64 = {args.gpu_fraction:.2g}"
        f" of an H100 SXM's {args.gpu_tflops:g} peak):\n"
    )
    print("| model | full run | FLOP | CPU time (this machine) | GPU time | reference "
          "implementation |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    extrapolated = {}
    for shape, result in results.items():
        extrapolated[shape] = ext = _extrapolate(result, args)
        print(_summary_row(shape, result, ext, args))
    print("\nTargets (issue 26):")
    for line in _targets(results, extrapolated):
        print(f"- {line}")
    return extrapolated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES)
    )
    parser.add_argument("--n-ctx", type=int, help="tokens a chunk (default: the config's)")
    parser.add_argument("--n-samples", type=int, default=1, help="chunks (1-2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-mb", type=float, help="lib.budget.limit for every section")
    parser.add_argument(
        "--plan", "--dry", action="store_true", help="path and FLOP only, from fake tensors"
    )
    parser.add_argument(
        "--run-generic", action="store_true", help="run sections on the generic path too"
    )
    parser.add_argument(
        "--sections", type=lambda s: s.split(","), help="only these: ln1,ln1_out,attn_in,..."
    )
    parser.add_argument("--vocab", type=int, help="a smaller vocabulary (quick checks)")
    parser.add_argument("--gpu-tflops", type=float, default=67.0, help="FP64 peak (H100 SXM)")
    parser.add_argument("--gpu-fraction", type=float, default=1 / 3, help="of it sustained")
    parser.add_argument("--timeout", type=float, help="seconds a child may run")
    parser.add_argument(
        "--max-memory-gb", type=float, help="address space a child may take (RLIMIT_AS)"
    )
    parser.add_argument("--workdir", help="keep the models and activations here (default: temp)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", choices=("prepare", "section", "plan"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.max_memory_gb:  # an allocation beyond it fails the section, not the machine
            limit = int(args.max_memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        child = {"prepare": _prepare_child, "section": _section_child, "plan": _plan_child}
        print(json.dumps(child[args.child](args)))
        return
    shapes = args.shapes.split(",")
    if set(shapes) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(set(shapes) - set(SHAPES))}; use {', '.join(SHAPES)}")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the children's logs
    load_before = os.getloadavg()[0]
    tmp = None
    if args.workdir is None:
        tmp = args.workdir = tempfile.mkdtemp(prefix="bench_lm_shapes_")
    args.temporary_workdir = tmp is not None
    try:
        results = {shape: _bench_shape(args, shape) for shape in shapes}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    extrapolated = _report(results, args, (load_before, os.getloadavg()[0]))
    if args.json:
        hidden = ("child", "shape", "index", "json", "temporary_workdir")
        out = dict(
            results=results, extrapolated=extrapolated, load_average_before=load_before,
            args={k: v for k, v in vars(args).items() if k not in hidden},
        )  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
