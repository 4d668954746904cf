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
    ("train-sae-hook-not-in-store",
     lambda w, m, s: ["train-sae", "--store", str(s), "--hook", "blocks.0.hook_resid_post",
                      "--out", str(w / "sae"), "--no-progress"], "is not in the store"),
    ("train-sae-store-missing",
     lambda w, m, s: ["train-sae", "--store", str(w / "nope"), "--hook", "hook_embed",
                      "--out", str(w / "sae"), "--no-progress"], "no activation store"),
]  # fmt: skip


# A collection that fails on its data keeps the empty store it started (manifest, no shard):
# the same command resumes it once the cause is fixed. Nothing else may be left.
RESUMABLE = {"activations-nan", "activations-overflow-float16"}


def _limit_file_size(limit: int) -> tuple[int, int]:
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    return before


@pytest.mark.parametrize(("case", "build", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, build, fragment, tiny_dir, store, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work, tiny_dir, store)
    before = store_files(work)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert "Traceback" not in err and fragment in err, err
    after = store_files(work)
    if case in RESUMABLE:
        manifest = json.loads(after.pop("out/manifest.json"))
        assert manifest["complete"] is False and manifest["shards"] == []
    assert after == before, "a partial artefact was left behind"


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
