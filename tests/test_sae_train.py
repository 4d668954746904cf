"""train_sae: learns, saves as sae-lens, is deterministic, resumes exactly, rejects bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crosslayer.errors import CrosslayerError, DataError
from crosslayer.sae import evaluate_sae, load_sae, train_sae

D = 16
SMALL = {"width": 64, "target_l0": 6, "batch_size": 128, "epochs": 8, "n_checkpoints": 3}


def sparse_data(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """x = sparse non-negative codes over 48 random unit directions + an offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(48, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.rand(n, 48, generator=g) * (torch.rand(n, 48, generator=g) < 0.08)
    return codes * 3 @ dirs + 0.3


def test_jumprelu_learns_and_saves_sae_lens_format(tmp_path):
    from sae_lens import SAE

    x = sparse_data()
    sae = train_sae(x, SMALL, tmp_path / "sae", hook="blocks.1.hook_resid_post", progress=False)
    metrics = evaluate_sae(sae, sparse_data(1024, seed=0)[:1024])
    assert metrics["explained_variance"] > 0.7
    assert 1 < metrics["l0"] < 30
    # opens with sae-lens itself and with load_sae; records provenance in its cfg
    raw = SAE.load_from_disk(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    torch.testing.assert_close(raw.encode(x[:32]), ours.encode(x[:32]))
    cfg = json.loads((tmp_path / "sae/cfg.json").read_text())
    meta = cfg["metadata"]
    assert cfg["architecture"] == "jumprelu" and cfg["d_sae"] == 64
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert meta["seed"] == 0 and meta["crosslayer_version"]
    assert meta["training_tokens"] == (4096 * 8 // 128) * 128
    assert not (tmp_path / "sae.ckpt").exists()  # checkpoints removed once complete
    # normalisation was folded in: raw activations in, raw-scale reconstruction out
    p = {k: v.double().numpy() for k, v in raw.state_dict().items()}
    xn = x[:64].double().numpy()
    pre = (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np.maximum(pre, 0) * (pre > p["threshold"])
    np.testing.assert_allclose(
        raw.encode(x[:64]).detach().double().numpy(), f, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        raw.decode(torch.from_numpy(f).float()).detach().double().numpy(),
        f @ p["W_dec"] + p["b_dec"],
        rtol=1e-4,
        atol=1e-4,
    )


def test_jumprelu_reaches_target_l0_on_offset_data(tmp_path):
    """Real residual streams carry a large constant offset (Gemma 3 270M blocks.12: the mean
    is 85% of E|x|^2, nearly all in one dimension). With a zero-initialised b_dec the latents
    learned the offset and L0 overshot the target; b_dec now starts at the mean."""
    x = sparse_data(8192)
    x[:, 0] += 8.0  # mean ~85% of E|x|^2, as measured
    sae = train_sae(x[:7168], SMALL, tmp_path / "sae", progress=False)
    metrics = evaluate_sae(sae, x[7168:])
    assert 3 <= metrics["l0"] <= 12  # target 6
    assert metrics["explained_variance"] > 0.7


def test_topk_has_exactly_k_active(tmp_path):
    sae = train_sae(
        sparse_data(),
        {**SMALL, "arch": "topk", "target_l0": 5, "epochs": 3},
        tmp_path / "topk",
        progress=False,
    )
    acts = sae.encode(sparse_data(512, seed=1))
    assert type(sae).__name__ == "TopKSAE"
    assert ((acts != 0).sum(-1) <= 5).all() and (acts != 0).sum(-1).float().mean() > 4


def test_seeded_runs_are_identical_and_seeds_differ(tmp_path):
    cfg = {**SMALL, "epochs": 2}
    a = train_sae(sparse_data(), cfg, tmp_path / "a", progress=False)
    b = train_sae(sparse_data(), cfg, tmp_path / "b", progress=False)
    c = train_sae(sparse_data(), {**cfg, "seed": 1}, tmp_path / "c", progress=False)
    torch.testing.assert_close(a.W_enc, b.W_enc, rtol=0, atol=0)
    assert not torch.allclose(a.W_enc, c.W_enc)


def test_resume_after_crash_gives_the_uninterrupted_result(tmp_path):
    x = sparse_data()
    cfg = {**SMALL, "epochs": 3, "shuffle_buffer": 1024}
    full = train_sae(lambda: iter(x.split(512)), cfg, tmp_path / "full", progress=False)

    calls = {"n": 0}

    def crashing():  # as_source reads twice, the norm estimate once, then one call per epoch
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return iter(x.split(512))

    with pytest.raises(KeyboardInterrupt):
        train_sae(crashing, cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-saved
    position = json.loads((tmp_path / "run.ckpt/latest/position.json").read_text())
    assert position["batches"] > 0
    resumed = train_sae(lambda: iter(x.split(512)), cfg, tmp_path / "run", progress=False)
    torch.testing.assert_close(resumed.W_enc, full.W_enc, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.threshold, full.threshold, rtol=0, atol=1e-6)
    # a checkpoint from other settings is refused, not silently mixed in
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        train_sae(crashing, cfg, tmp_path / "other", progress=False)
    with pytest.raises(CrosslayerError, match="different config"):
        train_sae(x, {**cfg, "lr": 1e-3}, tmp_path / "other", progress=False)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"width": 0}, "width 0 is out of range"),
        ({"width": 64, "target_l0": 100}, "target L0 100 is out of range"),
        ({"width": 64, "target_l0": 0}, "target L0 0 is out of range"),
        ({"arch": "topk", "target_l0": 2.5}, "integer target_l0"),
        ({"widht": 64}, "widht"),
        ({"width": 64, "target_l0": 8, "batch_size": 100000}, "less than one batch"),
    ],
)
def test_bad_config_is_one_line_error_and_writes_nothing(tmp_path, cfg, message):
    with pytest.raises(CrosslayerError, match=message) as err:
        train_sae(sparse_data(512), cfg, tmp_path / "sae", progress=False)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_data_and_existing_out(tmp_path):
    bad = sparse_data(512)
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        train_sae(bad, SMALL, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="shape"):
        train_sae(torch.zeros(10), SMALL, tmp_path / "a", progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(CrosslayerError, match="already exists"):
        train_sae(sparse_data(512), SMALL, tmp_path / "exists", progress=False)


def test_train_from_store_and_cli(tmp_path):
    from crosslayer.cli import main
    from crosslayer.model import tiny_model
    from crosslayer.store import collect

    model = tiny_model(n_layers=2, d_model=D)
    store = collect(
        model,
        ["blocks.1.hook_resid_post"],
        corpus="builtin:news",
        n_tokens=3000,
        heldout_frac=0.5,
        out=tmp_path / "store",
        progress=False,
    )
    code = main(
        [
            "train-sae",
            "--store",
            str(tmp_path / "store"),
            "--hook",
            "blocks.1.hook_resid_post",
            "--width",
            "32",
            "--target-l0",
            "8",
            "--batch-size",
            "256",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "sae"),
            "--no-progress",
        ]
    )
    assert code == 0
    sae = load_sae(tmp_path / "sae", model=model)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.dataset["path"] == str(store.path)
    assert (
        main(
            [
                "train-sae",
                "--store",
                str(tmp_path / "store"),
                "--hook",
                "blocks.0.hook_mlp_out",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "train-sae",
                "--store",
                str(tmp_path / "store"),
                "--hook",
                "blocks.1.hook_resid_post",
                "--width",
                "-3",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval-sae",
                "--sae",
                str(tmp_path / "sae"),
                "--store",
                str(tmp_path / "store"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 < metrics["l0"] < 32 and metrics["n_tokens"] == int((store.split == 1).sum())
