"""Crash safety: ``crosslayer collect`` killed with SIGKILL at random moments, then rerun.

Every trial must end with a store that verifies and equals an uninterrupted one byte for
byte (manifest included), with the shards finished before the kill left untouched and no
temporary directory left behind. Kill times are drawn from a seeded generator, so a
failure can be replayed.

The collection runs in a forked child (the real CLI, in a real process that really dies),
so that a trial does not pay for importing torch again: the kill window then spans
loading the model, writing the manifest, every shard write and the final manifest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from crosslayer.cli import main
from tests.cli_helpers import assert_same_store, collect_args

N = 600  # 6 shards of 100 tokens
SHARDS = ("--shard-tokens", "100")
TRIALS = 10


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted store, and how long a collection takes once imports are done."""
    root = tmp_path_factory.mktemp("crash")
    assert main(collect_args(tiny_dir, root / "reference", N, *SHARDS)) == 0
    start = time.perf_counter()
    assert main(collect_args(tiny_dir, root / "timing", N, *SHARDS)) == 0
    return root / "reference", time.perf_counter() - start


def _collect_in_child(argv: list[str]) -> None:
    raise SystemExit(main(argv))


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_at_a_random_moment_then_rerun(tiny_dir, reference, tmp_path, trial, capsys):
    ref, seconds = reference
    rng = random.Random(trial)
    out = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(
        target=_collect_in_child, args=(collect_args(tiny_dir, out, N, *SHARDS),)
    )
    child.start()
    time.sleep(rng.uniform(0.0, 1.2 * seconds))  # about 1 trial in 6 lets it finish
    os.kill(child.pid, signal.SIGKILL)
    child.join()

    manifest = out / "manifest.json"  # absent if killed while loading the model
    shards = json.loads(manifest.read_text())["shards"] if manifest.is_file() else []
    finished = [s["name"] for s in shards]
    kept = {p: p.stat().st_mtime_ns for name in finished for p in (out / name).iterdir()}
    if manifest.is_file():
        (out / ".shard_00004.tmp-planted").mkdir(exist_ok=True)  # as if killed mid-write

    assert main(collect_args(tiny_dir, out, N, *SHARDS)) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards not redone
    assert not list(out.glob(".*tmp*"))  # half-written temp dirs are cleaned up
    assert_same_store(out, ref)  # byte for byte, manifest included
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok:")


def test_verify_names_damaged_and_missing_files(tiny_dir, reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    (out / "shard_00003" / "doc_ids.npy").write_bytes(b"damaged")
    (out / "shard_00001" / "tokens.npy").unlink()
    assert main(["verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "2 bad file(s)" in err
    assert "shard_00001/tokens.npy missing" in err and "shard_00003/doc_ids.npy damaged" in err
    # the fix the message gives works: delete the shard directories, run collect again
    shutil.rmtree(out / "shard_00001")
    shutil.rmtree(out / "shard_00003")
    assert main(collect_args(tiny_dir, out, N, *SHARDS)) == 0
    assert_same_store(out, reference[0])


def test_killed_while_writing_the_first_manifest_then_rerun(tiny_dir, reference, tmp_path):
    """Only a half-written manifest temp file exists: the rerun starts cleanly."""
    ref, _ = reference
    out = tmp_path / "killed"
    out.mkdir()
    (out / ".manifest.json.tmp-deadbeef").write_text('{"config_ha')
    assert main(collect_args(tiny_dir, out, N, *SHARDS)) == 0
    assert not list(out.glob(".*tmp*"))
    assert_same_store(out, ref)
