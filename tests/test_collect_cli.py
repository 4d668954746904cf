"""`crosslayer collect` end to end: a real full disk, user errors (interrupts:
tests/test_crash_safety.py).

The CLI loads a tiny Gemma 3 saved to disk with ``save_pretrained``, the same code path
as any local model directory.
"""

from __future__ import annotations

import json
import re
import resource
import signal
from pathlib import Path

import pytest

from crosslayer.cli import main
from tests.cli_helpers import collect_args as _args
from tests.cli_helpers import spawn_cli as _cli
from tests.cli_helpers import store_files as _files


def _limit_file_size():  # runs in the child: writes beyond 150 kB fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_full_disk_during_a_shard_write(tiny_dir, tmp_path):
    out = tmp_path / "full"
    # --shard-tokens 1000: a 256 kB activation file, beyond the limit; the manifest fits
    proc = _cli([*_args(tiny_dir, out, 3000), "--shard-tokens", "1000"],
                preexec_fn=_limit_file_size)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full while writing")
    assert "shard_00000" in lines[0] and "File too large" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # nothing half-written
    # space is back: the same command finishes the store
    assert main([*_args(tiny_dir, out, 3000), "--shard-tokens", "1000"]) == 0
    assert json.loads((out / "manifest.json").read_text())["n_tokens"] == 3000


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", r"model path \S+ does not exist"),
        ("missing_corpus", r"corpus '\S+missing.jsonl' not found"),
        ("empty_corpus", r"empty.txt"),
        ("wrong_text_field", r"'text'"),
        ("unknown_hook", r"unknown hook name 'blocks.1.hook_resid' — use one of the forms"),
        ("layer_out_of_range", r"names layer 9 but the model has 4 layers"),
        ("bad_dtype", r"unknown --dtype 'float8'"),
        ("config_mismatch", r"was made with a different config \(differs in: context_len\)"),
    ],
)
def test_user_errors_are_one_line_and_leave_nothing(tiny_dir, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    args = _args(tiny_dir, out, 600)
    swap = {
        "missing_model": ("--model", str(tmp_path / "no-such-model")),
        "missing_corpus": ("--corpus", str(tmp_path / "missing.jsonl")),
        "empty_corpus": ("--corpus", _write(tmp_path / "empty.txt", "")),
        "wrong_text_field": ("--corpus", _write(tmp_path / "c.jsonl", '{"body": "Some text."}\n')),
        "unknown_hook": ("--hooks", "hook_embed,blocks.1.hook_resid"),
        "layer_out_of_range": ("--hooks", "blocks.9.hook_resid_post"),
        "bad_dtype": ("--dtype", "float8"),
        "config_mismatch": ("--context-len", "48"),
    }[case]
    if swap[0] in args:
        args[args.index(swap[0]) + 1] = swap[1]
    else:
        args += swap
    if case == "config_mismatch":
        assert main(_args(tiny_dir, out, 600)) == 0
        before = _files(out)
    capsys.readouterr()

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    if case == "config_mismatch":
        assert _files(out) == before  # the existing store is untouched
    else:
        assert not out.exists()
