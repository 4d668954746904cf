"""Device and dtype selection and host-to-device copies: every path testable without a GPU.

What needs a GPU itself (pinned copies landing on CUDA, bf16 on CUDA) is checked by
``make gpu-check`` (scripts/gpu_check.py, docs/gpu.md) on a CUDA machine.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslayer import device as dev
from crosslayer.config import build_config
from crosslayer.errors import CrosslayerError
from crosslayer.model import tiny_model
from crosslayer.plan import model_itemsize
from crosslayer.store import CollectConfig, collect, open_store

CPU = torch.device("cpu")
HOOKS = ["hook_embed", "blocks.2.hook_resid_post"]


def test_auto_is_float32_on_cpu_and_bf16_on_a_cuda_device_that_has_it(monkeypatch) -> None:
    assert dev.resolve_dtype(None, CPU) == dev.resolve_dtype("auto", CPU) == torch.float32
    # no GPU here: the CUDA query is the one thing replaced, the rule itself runs
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.resolve_dtype("auto", torch.device("cuda")) == torch.float32


@pytest.mark.parametrize(
    ("name", "want"),
    [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
     ("bf16", torch.bfloat16), ("float16", torch.float16), (torch.float16, torch.float16)],
)  # fmt: skip
def test_explicit_dtypes(name, want) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without it: covered below
        assert dev.resolve_dtype(name, CPU) == want


def test_unknown_dtype_and_missing_gpu_are_one_line_errors() -> None:
    with pytest.raises(CrosslayerError, match="unknown dtype 'int8'"):
        dev.resolve_dtype("int8", CPU)
    if not torch.cuda.is_available():
        with pytest.raises(CrosslayerError, match="no GPU is visible"):
            dev.resolve_device("cuda")
        assert dev.resolve_device("auto") == CPU


def test_native_bf16_detection_matches_the_cpu_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.is_file():
        pytest.skip("the reference reads x86 CPU flags from /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    assert dev.cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_bf16_on_a_cpu_without_it_warns(monkeypatch) -> None:
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        assert dev.resolve_dtype("bfloat16", CPU) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dev.resolve_dtype("bfloat16", CPU)


def test_to_device_never_pins_for_the_cpu() -> None:
    # pinning needs a CUDA runtime: on a CPU-only torch pin_memory() raises, so returning
    # here at all shows the guard held; the tensor is handed back as is (no copy)
    t = torch.arange(6)
    assert dev.to_device(t, CPU) is t
    moved = dev.to_device(t, torch.device("meta"))  # another device, not CUDA: plain .to
    assert moved.device.type == "meta" and moved.shape == t.shape
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            t.pin_memory()


def test_a_bf16_model_fills_a_float32_store_within_bf16_rounding(tmp_path: Path) -> None:
    """The opt-in bf16 path: stores stay float32, values within bf16's rounding of fp32's."""
    settings = dict(corpus="builtin:news", n_tokens=600, context_len=32, progress=False)
    fp32 = collect(tiny_model(), HOOKS, out=tmp_path / "fp32", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = collect(tiny_model(dtype="bfloat16"), HOOKS, out=tmp_path / "bf16", **settings)
    assert bf16.manifest["config"]["model"]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(bf16.tokens, fp32.tokens)
    for hook in HOOKS:
        a, b = fp32.activations(hook)[:], bf16.activations(hook)[:]
        assert b.dtype == np.float32
        err = np.abs(a - b).max() / np.abs(a).max()
        assert 0 < err < 0.05, (hook, err)  # bf16 has 8 mantissa bits: ~0.4% a value
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_model_dtype_reaches_the_model_from_collect_and_run_configs(tiny_dir, tmp_path) -> None:
    cfg = CollectConfig(model=str(tiny_dir), hooks=HOOKS, corpus="builtin:news", tokens=300,
                        out=tmp_path / "s", context_len=32, device="cpu",
                        model_dtype="bfloat16")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg.run(progress=False)
    assert open_store(tmp_path / "s").manifest["config"]["model"]["dtype"] == "bfloat16"
    run = build_config("quick", overrides={"model_dtype": "bfloat16", "device": "cpu"})
    assert model_itemsize(run) == 2
    assert model_itemsize(build_config("quick", overrides={"device": "cpu"})) == 4
    assert run.hash() != build_config("quick", overrides={"device": "cpu"}).hash()
    with pytest.raises(CrosslayerError):
        build_config("quick", overrides={"model_dtype": "int8"})
