"""MKL's reproducible mode is crosslayer's own doing, on every way in.

Each case runs in a child process whose environment has neither ``MKL_CBWR`` nor
``MKL_DYNAMIC``, and reads back from MKL itself the mode it computes in.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crosslayer import numerics
from tests.cli_helpers import ENV, collect_args

pytestmark = pytest.mark.skipif(
    numerics.state()["mkl_cbwr"] == "no MKL", reason="torch here computes without MKL"
)

READ_BACK = "from crosslayer.numerics import state; import json; print(json.dumps(state()))"


def _child(code: str, **env: str) -> tuple[dict[str, str], str]:
    run = subprocess.run(
        [sys.executable, "-c", code], env={**ENV, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_the_environment_of_these_children_has_no_mkl_setting() -> None:
    assert "MKL_CBWR" not in ENV and "MKL_DYNAMIC" not in ENV


def test_import_crosslayer_first_sets_the_mode_through_the_environment() -> None:
    state, err = _child(f"import crosslayer, os; {READ_BACK}")
    assert state["mkl_cbwr"] == "AUTO" and state["mkl_dynamic"] == "FALSE", state
    assert "could not make MKL reproducible" not in err


def test_torch_imported_first_still_gets_the_mode() -> None:
    state, err = _child(f"import torch; import crosslayer; {READ_BACK}")
    assert state["mkl_cbwr"] == "AUTO" and state["mkl_dynamic"] == "FALSE", state
    assert "could not make MKL reproducible" not in err


def test_torch_used_first_keeps_mkl_default_and_warns_once() -> None:
    code = f"import torch; a = torch.randn(64, 64); a @ a; import crosslayer; {READ_BACK}"
    state, err = _child(code)
    assert state["mkl_cbwr"] == "OFF", state  # MKL refuses a mode change once it has run
    assert err.count("could not make MKL reproducible") == 1
    assert "MKL_CBWR=AUTO" in err  # the fix is in the warning


def test_a_users_own_setting_is_left_alone() -> None:
    state, _ = _child(f"import crosslayer; {READ_BACK}", MKL_CBWR="COMPATIBLE", MKL_DYNAMIC="TRUE")
    assert state["mkl_cbwr"] == "COMPATIBLE" and state["mkl_dynamic"] == "TRUE", state


def test_this_test_process_is_in_the_mode_too() -> None:
    # conftest removed the variables and imported torch before crosslayer
    assert numerics.state()["mkl_cbwr"] == "AUTO"
    assert numerics.identity_promised()


def test_the_cli_records_the_mode_in_the_store_provenance(tiny_dir, tmp_path) -> None:
    out = tmp_path / "store"
    run = subprocess.run(
        [sys.executable, "-m", "crosslayer", *collect_args(tiny_dir, out, 300)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    versions = json.loads((out / "manifest.json").read_text())["versions"]
    assert versions["mkl_cbwr"] == "AUTO" and versions["mkl_dynamic"] == "FALSE"
    assert versions["torch_threads"] == "1"  # OMP_NUM_THREADS=1 in ENV
