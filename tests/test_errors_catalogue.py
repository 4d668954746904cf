"""The bad-input catalogue of docs/errors.md, one row per case, run through the real CLI.

Each row builds a bad input in a fresh directory and runs ``crosslayer.cli.main(argv)``:
the exit code is non-zero, stderr is exactly one ``error: ...`` line containing the
expected fragment (no traceback), and no new artefact is left in the working directory.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslayer.cli import main
from crosslayer.model import tiny_model
from tests.cli_helpers import collect_args, store_files

Build = Callable[[Path, Path, Path], list[str]]  # (work dir, tiny model dir, store) -> argv


@pytest.fixture(scope="module")
def store(tiny_dir, tmp_path_factory) -> Path:
    """A finished small store: 3 shards of 200 tokens."""
    out = tmp_path_factory.mktemp("catalogue") / "store"
    assert main(collect_args(tiny_dir, out, 600, "--shard-tokens", "200")) == 0
    return out


def _copy(store: Path, work: Path) -> Path:
    return Path(shutil.copytree(store, work / "store"))


def _swap(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _collect(work: Path, model: Path, *swaps: tuple[str, str]) -> list[str]:
    args = collect_args(model, work / "out", 300)
    for flag, value in swaps:
        args = _swap(args, flag, value) if flag in args else [*args, flag, value]
    return args


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _nonempty_dir(work: Path) -> str:
    (work / "d").mkdir()
    (work / "d" / "notes.txt").write_text("mine")
    return str(work / "d")


def _broken_model(work: Path, nan: bool) -> Path:
    lm = tiny_model()
    with torch.no_grad():
        if nan:
            lm.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
        else:
            lm.model.get_input_embeddings().weight.mul_(1e7)
    lm.model.save_pretrained(work / "model")
    lm.tokenizer.save_pretrained(work / "model")
    return work / "model"


def _verify_damaged(work: Path, store: Path) -> list[str]:
    s = _copy(store, work)
    (s / "shard_00001" / "tokens.npy").write_bytes(b"damaged")
    return ["verify", str(s)]


def _verify_missing(work: Path, store: Path) -> list[str]:
    s = _copy(store, work)
    (s / "shard_00002" / "split.npy").unlink()
    return ["verify", str(s)]


def _manifest_edit(work: Path, store: Path, edit: Callable[[dict], object]) -> list[str]:
    s = _copy(store, work)
    manifest = json.loads((s / "manifest.json").read_text())
    edit(manifest)
    (s / "manifest.json").write_text(json.dumps(manifest))
    return ["verify", str(s)]


def _truncated_manifest(work: Path, store: Path) -> list[str]:
    s = _copy(store, work)
    (s / "manifest.json").write_bytes((s / "manifest.json").read_bytes()[:100])
    return ["verify", str(s)]


def _wrong_dtype_shard(work: Path, store: Path) -> list[str]:
    s = _copy(store, work)  # int64 where float32 activations belong: the checksum catches it
    np.save(s / "shard_00000" / "hook_embed.npy", np.zeros((200, 64), np.int64))
    return ["verify", str(s)]


def _gemma_scope_npz(work: Path, truncate: bool) -> str:
    d = work / "layer_2" / "width_16k" / "canonical"
    d.mkdir(parents=True)
    np.savez(d / "params.npz", W_enc=np.zeros((64, 8), np.float32))
    if truncate:
        data = (d / "params.npz").read_bytes()
        (d / "params.npz").write_bytes(data[: len(data) // 2])
    return str(d / "params.npz")


def _bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# Latin-1 "café" in the second record: the byte 0xe9 at offset 31 is not UTF-8
LATIN1_JSONL = b'{"text": "hello"}\n{"text": "caf\xe9"}\n'
BINARY = bytes(range(256)) * 4  # 0x80 at offset 128 is the first byte that is not UTF-8


def _parquet_binary(work: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([b"raw bytes"], pa.binary())}), work / "c.parquet")
    return str(work / "c.parquet")


def _run(work: Path, model: Path, *extra: str) -> list[str]:
    """``crosslayer run`` on the tiny model, into ``work/run``: every case fails before that
    directory is made."""
    return ["run", "--model", str(model), "--corpus", "builtin:news", "--out", str(work / "run"),
            "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _train_sae(work: Path, store: str, *extra: str) -> list[str]:
    return ["train-sae", "--store", store, "--hook", "hook_embed", "--out", str(work / "sae"),
            "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _layers(work: Path, model: Path) -> list[str]:
    return ["layers", "--model", str(model), "--out", str(work / "layers")]


GEMMA_SCOPE = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"


def _gemma_scope_d32(work: Path) -> str:
    """A complete Gemma Scope 1 params.npz for a 32-wide model (the store's model has 64)."""
    d, n = 32, 8
    arrays = {"W_enc": (d, n), "W_dec": (n, d), "b_enc": (n,), "b_dec": (d,), "threshold": (n,)}
    np.savez(work / "params.npz", **{k: np.ones(v, np.float32) for k, v in arrays.items()})
    return str(work / "params.npz")


def _heldout_store(work: Path, model: Path) -> str:
    """A small store with held-out tokens (the module's store has none)."""
    assert main(collect_args(model, work / "st", 300, "--heldout-frac", "0.5")) == 0
    return str(work / "st")


def _residual_sae(work: Path) -> str:
    """A tiny SAE whose cfg.json says it reads residuals (study A's residual SAE)."""
    from crosslayer.sae import train_sae

    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))
    cfg = {"width": 16, "target_l0": 2, "batch_size": 128, "epochs": 1, "arch": "topk"}
    reads = {"kind": "residual", "source_hook": "hook_embed", "transcoder": "ridge"}
    train_sae(x, cfg, work / "rsae", hook="blocks.1.hook_resid_post", reads=reads, progress=False)
    return str(work / "rsae")


def _eval_sae(work: Path, store: Path, sae: str, model: Path) -> list[str]:
    return ["eval-sae", "--sae", sae, "--store", str(store), "--model", str(model),
            "--device", "cpu"]  # fmt: skip


# (id, argv builder, expected fragment of the one error line); docs/errors.md has the same ids
CASES: list[tuple[str, Build, str]] = [
    ("model-missing", lambda w, m, s: _collect(w, m, ("--model", str(w / "nope"))),
     "does not exist"),
    ("model-not-a-model", lambda w, m, s: _collect(w, m, ("--model", _write(w / "m.txt", "x"))),
     "m.txt"),
    ("corpus-missing", lambda w, m, s: _collect(w, m, ("--corpus", str(w / "c.jsonl"))),
     "not found"),
    ("corpus-empty", lambda w, m, s: _collect(w, m, ("--corpus", _write(w / "e.txt", ""))),
     "e.txt"),
    ("corpus-wrong-text-field",
     lambda w, m, s: _collect(w, m, ("--corpus", _write(w / "c.jsonl", '{"body": "Hi."}\n'))),
     "'text'"),
    ("corpus-bad-jsonl",
     lambda w, m, s: _collect(w, m, ("--corpus", _write(w / "c.jsonl", '{"text": "a"\n'))),
     "c.jsonl"),
    ("hook-typo", lambda w, m, s: _collect(w, m, ("--hooks", "blocks.1.hook_resid")),
     "unknown hook name"),
    ("hook-layer-out-of-range",
     lambda w, m, s: _collect(w, m, ("--hooks", "blocks.9.hook_resid_post")), "has 4 layers"),
    ("store-dtype-unknown", lambda w, m, s: _collect(w, m, ("--dtype", "float8")),
     "unknown --dtype 'float8'"),
    ("out-is-a-file", lambda w, m, s: _collect(w, m, ("--out", _write(w / "f", "x"))),
     "is not an activation store"),
    ("out-not-empty", lambda w, m, s: _collect(w, m, ("--out", _nonempty_dir(w))),
     "is not an activation store"),
    ("store-config-mismatch",
     lambda w, m, s: _swap(collect_args(m, _copy(s, w), 600, "--shard-tokens", "200"),
                           "--context-len", "48"), "differs in: context_len"),
    ("activations-nan", lambda w, m, s: _collect(w, m, ("--model", str(_broken_model(w, True)))),
     "non-finite activations"),
    ("activations-overflow-float16",
     lambda w, m, s: _collect(w, m, ("--model", str(_broken_model(w, False))),
                              ("--dtype", "float16")), "beyond float16's range"),
    ("device-unknown", lambda w, m, s: _collect(w, m, ("--device", "tpu")), "tpu"),
    ("model-dtype-unknown", lambda w, m, s: _collect(w, m, ("--model-dtype", "int8")),
     "unknown --model-dtype 'int8'"),
    ("verify-not-a-store", lambda w, m, s: ["verify", str(w)], "no activation store"),
    ("verify-damaged-shard", lambda w, m, s: _verify_damaged(w, s),
     "shard_00001/tokens.npy damaged"),
    ("verify-missing-file", lambda w, m, s: _verify_missing(w, s),
     "shard_00002/split.npy missing"),
    ("verify-wrong-dtype-shard", lambda w, m, s: _wrong_dtype_shard(w, s),
     "shard_00000/hook_embed.npy damaged"),
    ("verify-incomplete-store",
     lambda w, m, s: _manifest_edit(w, s, lambda d: d.update(complete=False)), "incomplete"),
    ("manifest-truncated", lambda w, m, s: _truncated_manifest(w, s), "cannot read"),
    ("manifest-foreign",
     lambda w, m, s: _manifest_edit(w, s, lambda d: d.update(format="other")),
     "not a crosslayer activation store"),
    ("sae-npz-truncated",
     lambda w, m, s: _eval_sae(w, s, _gemma_scope_npz(w, truncate=True), m), "as .npz"),
    ("sae-npz-missing-arrays",
     lambda w, m, s: _eval_sae(w, s, _gemma_scope_npz(w, truncate=False), m), "params.npz"),
    ("sae-not-an-sae", lambda w, m, s: _eval_sae(w, s, str(w), m), "is not an SAE"),
    ("eval-sae-store-of-another-model",
     lambda w, m, s: ["eval-sae", "--sae", _gemma_scope_d32(w), "--store", _heldout_store(w, m),
                      "--hook", "hook_embed", "--device", "cpu"],
     "activations have width 64 but the SAE expects d_in=32"),
    ("eval-sae-model-of-another-width",  # the SAE is read first, then checked on the model
     lambda w, m, s: [*_eval_sae(w, s, _gemma_scope_d32(w), m), "--hook", "hook_embed"],
     "SAE input width d_in=32 does not match the model's d_model=64"),
    ("eval-sae-residual-sae-on-raw-hook",
     lambda w, m, s: _eval_sae(w, s, _residual_sae(w), m), "this SAE reads residual input"),
    ("train-sae-hook-not-in-store",
     lambda w, m, s: ["train-sae", "--store", str(s), "--hook", "blocks.0.hook_resid_post",
                      "--out", str(w / "sae"), "--no-progress"], "is not in the store"),
    ("train-sae-store-missing",
     lambda w, m, s: ["train-sae", "--store", str(w / "nope"), "--hook", "hook_embed",
                      "--out", str(w / "sae"), "--no-progress"], "no activation store"),
    # corpus files that are not UTF-8 text, and a parquet text column of raw bytes
    ("corpus-not-utf8", lambda w, m, s: _collect(w, m, ("--corpus", _bytes(w / "b.txt", BINARY))),
     "b.txt is not UTF-8 text (byte 0x80 at offset 128)"),
    ("corpus-not-utf8-jsonl",
     lambda w, m, s: _collect(w, m, ("--corpus", _bytes(w / "c.jsonl", LATIN1_JSONL))),
     "c.jsonl is not UTF-8 text (byte 0xe9 at offset 31)"),
    ("corpus-not-utf8-in-dir",
     lambda w, m, s: _collect(w, m, ("--corpus", str(Path(_bytes(w / "b.txt", BINARY)).parent))),
     "b.txt is not UTF-8 text"),
    ("run-corpus-not-utf8",
     lambda w, m, s: _run(w, m, "--corpus", _bytes(w / "b.txt", BINARY)), "is not UTF-8 text"),
    ("corpus-parquet-not-text", lambda w, m, s: _collect(w, m, ("--corpus", _parquet_binary(w))),
     "column 'text' holds binary, not text"),
    ("contrast-items-not-utf8",
     lambda w, m, s: ["contrast", "--items", _bytes(w / "i.jsonl", LATIN1_JSONL),
                      "--model", str(m), "--out", str(w / "c")], "items file"),
    ("interpret-facts-not-utf8",
     lambda w, m, s: ["interpret", "--facts", _bytes(w / "f.json", BINARY), "--model", str(m),
                      "--sae", "1=x", "--out", str(w / "i")], "fact file"),
    # run configs that used to fail only after collection: now before the run directory
    ("run-l0-over-width", lambda w, m, s: _run(w, m, "--width", "16", "--target-l0", "64"),
     "target L0 64 is out of range for width 16"),
    ("run-topk-fractional-l0",
     lambda w, m, s: _run(w, m, "--arch", "topk", "--target-l0", "2.5"), "integer target_l0"),
    ("run-sae-lr-too-large", lambda w, m, s: _run(w, m, "--set", "sae_training.lr=3"),
     "lr must be in (0, 1)"),
    ("run-sae-batch-over-tokens",
     lambda w, m, s: _run(w, m, "--tokens", "100", "--set", "sae_training.batch_size=100000"),
     "less than one batch of 100,000"),
    ("run-negative-alpha", lambda w, m, s: _run(w, m, "--set", "transcoder.alphas=[-1]"),
     "alphas must be a non-empty list of numbers >= 0"),
    ("run-source-is-target",
     lambda w, m, s: _run(w, m, "--source", "blocks.1.hook_resid_post",
                          "--target", "blocks.1.hook_resid_post"), "are the same hook"),
    ("run-target-not-deeper",
     lambda w, m, s: _run(w, m, "--source", "blocks.2.hook_resid_post",
                          "--target", "blocks.1.hook_resid_post"), "is not deeper than source"),
    ("run-hook-typo", lambda w, m, s: _run(w, m, "--source", "hook_embd"), "unknown hook name"),
    ("run-hook-past-last-block",
     lambda w, m, s: _run(w, m, "--target", "blocks.9.hook_resid_post"),
     "past the model's last block (4 blocks)"),
    ("run-model-missing", lambda w, m, s: _run(w, m, "--model", str(w / "nope")),
     "does not exist"),
    ("run-device-unknown", lambda w, m, s: _run(w, m, "--device", "tpu"), "unknown device 'tpu'"),
    ("run-sae-unknown", lambda w, m, s: _run(w, m, "--sae", "no-such-release/x"),
     "unknown SAE release 'no-such-release'"),
    ("run-out-is-a-file", lambda w, m, s: _swap(_run(w, m), "--out", _write(w / "f", "x")),
     "is a file"),
    ("run-out-inside-a-file",
     lambda w, m, s: _swap(_run(w, m), "--out", str(Path(_write(w / "f", "x")) / "run")),
     "lies inside the file"),
    ("run-flag-not-a-number", lambda w, m, s: _run(w, m, "--width", "abc"),
     "Invalid value for '--width'"),
    ("run-config-typo",
     lambda w, m, s: _run(w, m, "--config", _write(w / "c.yaml", "sae_trainig:\n  width: 8\n")),
     "unknown config key 'sae_trainig'"),
    ("run-config-wrong-type",
     lambda w, m, s: _run(w, m, "--config", _write(w / "c.toml", 'tokens = "many"\n')),
     "config key 'tokens'"),
    ("run-config-bad-syntax",
     lambda w, m, s: _run(w, m, "--config", _write(w / "c.yaml", "tokens: [1\n")),
     "cannot parse"),
    ("run-config-section-typo",
     lambda w, m, s: _run(w, m, "--set", "probes.max_featurs=5"),
     "unknown config key 'probes.max_featurs' in section 'probes'"),
    # the hub with no network: HF_HUB_OFFLINE (set by conftest); no DNS: test_no_dns_*
    ("hub-model-offline", lambda w, m, s: _collect(w, m, ("--model", "google/gemma-2-2b")),
     "'google/gemma-2-2b' is neither a local path nor in the local Hugging Face cache, and "
     "HF_HUB_OFFLINE is set"),
    ("run-hub-model-offline", lambda w, m, s: _run(w, m, "--model", "google/gemma-2-2b"),
     "huggingface-cli download google/gemma-2-2b"),
    ("hub-dataset-offline", lambda w, m, s: _collect(w, m, ("--corpus", "hf:someone/texts")),
     "hub datasets are streamed"),
    ("hub-sae-offline", lambda w, m, s: _eval_sae(w, s, GEMMA_SCOPE, m),
     "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"),
    # other commands
    ("train-sae-l0-over-width",  # checked before the store is read (there is none here)
     lambda w, m, s: _train_sae(w, str(w / "nope"), "--width", "16", "--target-l0", "64"),
     "target L0 64 is out of range for width 16"),
    ("train-sae-zero-epochs", lambda w, m, s: _train_sae(w, str(s), "--epochs", "0"),
     "epochs must be at least 1"),
    ("train-sae-tokens-under-a-batch",
     lambda w, m, s: _train_sae(w, str(s), "--tokens", "10", "--batch-size", "64"),
     "less than one batch of 64"),
    ("train-sae-out-inside-a-file",
     lambda w, m, s: _swap(_train_sae(w, str(s)), "--out", str(Path(_write(w / "f", "x")) / "s")),
     "lies inside the file"),
    ("collect-out-inside-a-file",
     lambda w, m, s: _collect(w, m, ("--out", str(Path(_write(w / "f", "x")) / "store"))),
     "lies inside the file"),
    ("collect-heldout-everything", lambda w, m, s: _collect(w, m, ("--heldout-frac", "1")),
     "holds out every document"),
    ("collect-tokens-zero", lambda w, m, s: _collect(w, m, ("--tokens", "0")),
     "Invalid value for '--tokens'"),
    ("eval-sae-contexts-zero",
     lambda w, m, s: [*_eval_sae(w, s, str(w), m), "--contexts", "0"],
     "Invalid value for '--contexts'"),
    ("eval-sae-out-is-a-directory",
     lambda w, m, s: [*_eval_sae(w, s, str(w), m), "--out", str(w)], "is a directory"),
    ("layers-out-is-a-file",
     lambda w, m, s: ["layers", "--model", str(m), "--out", _write(w / "f", "x")], "is a file"),
    ("contrast-alpha-out-of-range",
     lambda w, m, s: ["contrast", "--model", str(m), "--out", str(w / "c"), "--alpha", "2"],
     "--alpha 2 is not a significance level"),
    ("interpret-out-is-a-file",
     lambda w, m, s: ["interpret", "--facts", _write(w / "f.json", '[[["[MASK] x", "y", "P1"]]]'),
                      "--model", str(m), "--sae", "1=x", "--out", _write(w / "o", "x")],
     "is a file"),
    ("interpret-selection-unknown",
     lambda w, m, s: ["interpret", "--facts", _write(w / "f.json", '[[["[MASK] x", "y", "P1"]]]'),
                      "--model", str(m), "--sae", "1=x", "--selection", "best",
                      "--out", str(w / "o")], "unknown --selection 'best'"),
    ("interpret-translator-few-groups",
     lambda w, m, s: ["interpret", "--facts", _write(w / "f.json", '[[["[MASK] x", "y", "P1"]]]'),
                      "--model", str(m), "--sae", "1=x", "--lens-translator",
                      "--out", str(w / "o")], "the translator needs at least 5 fact groups"),
    ("layers-range-reversed",
     lambda w, m, s: [*_layers(w, m), "--layers", "3-1"], "the range 3-1 is empty"),
    # checked against the model's config before its weights load (no "Loading weights" bar)
    ("layers-layer-out-of-range",
     lambda w, m, s: [*_layers(w, m), "--layers", "0,9"], "invalid for a model with 4 blocks"),
    ("layers-sae-layer-out-of-range",
     lambda w, m, s: [*_layers(w, m), "--sae", f"7={w}"], "layers [7] invalid"),
    ("layers-sae-unknown",
     lambda w, m, s: [*_layers(w, m), "--sae", "1=no-such-release/x"], "unknown SAE release"),
    ("layers-store-missing",
     lambda w, m, s: [*_layers(w, m), "--store", str(w / "nope")], "no activation store"),
    ("contrast-sae-dir-missing",
     lambda w, m, s: ["contrast", "--model", str(m), "--out", str(w / "c"),
                      "--sae-dir", str(w / "nope")], "is not a directory"),
    ("contrast-space-unknown",
     lambda w, m, s: ["contrast", "--model", str(m), "--out", str(w / "c"), "--space", "cosine"],
     "spaces ['cosine'] invalid"),
    ("unknown-command", lambda w, m, s: ["colect"], "No such command 'colect'"),
    ("compare-one-run", lambda w, m, s: ["compare", str(w), "--out", str(w / "c")],
     "compare needs at least two runs, got 1"),
    ("compare-not-a-run", lambda w, m, s: ["compare", str(w), str(w), "--out", str(w / "c")],
     "no results.json in"),
    ("compare-out-is-a-file",
     lambda w, m, s: ["compare", str(w), str(w), "--out", _write(w / "f", "x")], "is a file"),
]  # fmt: skip


# A collection that fails on its data keeps the empty store it started (manifest, no shard):
# the same command resumes it once the cause is fixed. Nothing else may be left.
RESUMABLE = {"activations-nan", "activations-overflow-float16"}


def _limit_file_size(limit: int) -> tuple[int, int]:
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    return before


def _tree(work: Path) -> set[str]:
    """Every path under ``work``, directories included (an empty run directory counts)."""
    return {str(p.relative_to(work)) for p in work.rglob("*")}


def _fails_in_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI: exit code 2, exactly one ``error:`` line holding ``fragment``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert "Traceback" not in err and fragment in err, err
    return err


@pytest.mark.parametrize(("case", "build", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, build, fragment, tiny_dir, store, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work, tiny_dir, store)
    before, tree = store_files(work), _tree(work)
    _fails_in_one_line(argv, fragment, capsys)
    after = store_files(work)
    if case in RESUMABLE:
        manifest = json.loads(after.pop("out/manifest.json"))
        assert manifest["complete"] is False and manifest["shards"] == []
        tree |= {"out", "out/manifest.json"}
    assert after == before, "a partial artefact was left behind"
    assert _tree(work) == tree, "a new file or directory was left behind"


def test_run_config_fails_before_any_work(tiny_dir, tmp_path, capsys, monkeypatch):
    """An L0 above the width is refused when the config is built: no run directory, no
    store, and the model is never loaded (it used to fail after both stores were collected)."""
    import crosslayer.model

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(crosslayer.model, "load_model", no_load)
    argv = _run(tmp_path, tiny_dir, "--width", "16", "--target-l0", "64")
    _fails_in_one_line(argv, "use 0 < target_l0 < 16", capsys)
    assert list(tmp_path.iterdir()) == []


def test_run_split_too_small_for_a_batch_fails_before_collection(tiny_dir, tmp_path, capsys):
    """The exact train split (known once the corpus is tokenised) against the SAE batch:
    refused before the stores are collected."""
    argv = _run(tmp_path, tiny_dir, "--tokens", "2000", "--set", "sae_training.epochs=1",
                "--set", "sae_training.batch_size=1990", "--set", "data.heldout_frac=0.5",
                "--set", "data.max_doc_chars=200",
                "--set", "sweep.enabled=false")  # fmt: skip
    _fails_in_one_line(argv, "less than one batch of 1,990", capsys)
    assert not (tmp_path / "run" / "store").exists()


# The hub with no network and no offline variable set: the host does not resolve.
NO_DNS: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    ("model", lambda w, m: _collect(w, m, ("--model", "google/gemma-2-2b")),
     "huggingface-cli download google/gemma-2-2b"),
    ("dataset", lambda w, m: _collect(w, m, ("--corpus", "hf:someone/texts")),
     "save_to_disk"),
    ("sae", lambda w, m: ["run", "--model", str(m), "--sae", GEMMA_SCOPE, "--out", str(w / "r")],
     f"SAE {GEMMA_SCOPE} is not in the local Hugging Face cache"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "build", "fragment"), NO_DNS, ids=[c[0] for c in NO_DNS])
def test_no_dns_gives_one_line_at_once(what, build, fragment, tiny_dir, tmp_path, capsys,
                                       monkeypatch):  # fmt: skip
    import socket

    from crosslayer.hub import OFFLINE_VARS

    asked: list[str] = []

    def no_dns(host: str, *args: object, **kwargs: object) -> None:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    err = _fails_in_one_line(build(tmp_path, tiny_dir), fragment, capsys)
    assert "(huggingface.co) cannot be reached: no network" in err
    assert asked == ["huggingface.co"]
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_full_disk_gives_one_line(tiny_dir, tmp_path, capsys):
    """Writes beyond 20 kB fail with EFBIG (as a full disk would): the manifest fits, the
    first shard does not, and nothing half-written is left."""
    out = tmp_path / "out"
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    before = _limit_file_size(20_000)
    try:
        code = main(collect_args(tiny_dir, out, 300))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "disk full while writing" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
