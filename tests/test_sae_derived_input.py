"""An SAE trained on residuals says so in cfg.json, and load_sae will not put it on the raw hook."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.model.tiny import tiny_model
from crosslayer.sae import load_sae, train_sae
from crosslayer.sae.load import DerivedInputWarning, derived_input

D = 64
HOOK = "blocks.2.hook_resid_post"
TINY = {"width": 32, "target_l0": 4, "batch_size": 128, "epochs": 1, "arch": "topk"}
READS = {"kind": "residual", "source_hook": "hook_embed", "transcoder": "ridge"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    x = torch.randn(1024, D, generator=torch.Generator().manual_seed(0))
    train_sae(x, TINY, root / "residual", hook=HOOK, reads=READS, progress=False)
    train_sae(x, TINY, root / "baseline", hook=HOOK, progress=False)
    return root


def test_cfg_json_says_it_reads_residuals(saved) -> None:
    meta = json.loads((saved / "residual" / "cfg.json").read_text())["metadata"]
    assert meta["crosslayer_input"] == READS
    assert derived_input(load_sae(saved / "residual")) == READS
    assert derived_input(load_sae(saved / "baseline")) is None


def test_loading_it_on_the_raw_hook_is_an_error(saved) -> None:
    lm = tiny_model(n_layers=4, d_model=D)
    with pytest.raises(CrosslayerError, match="reads residual input"):
        load_sae(saved / "residual", model=lm)
    # the caller that feeds it residuals says so; the baseline SAE needs nothing
    assert load_sae(saved / "residual", model=lm, derived_ok=True).cfg.d_in == D
    assert load_sae(saved / "baseline", model=lm).cfg.d_in == D


def test_overriding_its_hook_warns(saved) -> None:
    with pytest.warns(DerivedInputWarning, match="hook_embed"):
        load_sae(saved / "residual", hook=HOOK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sae(saved / "baseline", hook=HOOK)
