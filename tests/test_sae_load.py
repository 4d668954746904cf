"""load_sae on every file format, checked against a float64 numpy JumpReLU reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from crosslayer.errors import CrosslayerError, DataError
from crosslayer.sae import load_sae, neuronpedia_url, pick_sae_dir

D, N = 16, 48


def random_params(seed: int = 0, d: int = D, n: int = N, d_out: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    d_out = d if d_out is None else d_out
    return {
        "W_enc": rng.normal(size=(d, n)).astype(np.float32),
        "W_dec": rng.normal(size=(n, d_out)).astype(np.float32),
        "b_enc": rng.normal(scale=0.5, size=n).astype(np.float32),
        "b_dec": rng.normal(size=d_out).astype(np.float32),
        # thresholds inside the pre-activation range, so that dropping them changes the answer
        "threshold": rng.uniform(0.5, 2.0, size=n).astype(np.float32),
    }


def ref_encode(p: dict, x: np.ndarray, b_dec_in: bool = False) -> np.ndarray:
    x = x.astype(np.float64)
    if b_dec_in:
        x = x - p["b_dec"].astype(np.float64)
    pre = x @ p["W_enc"].astype(np.float64) + p["b_enc"]
    return np.maximum(pre, 0) * (pre > p["threshold"])


def ref_decode(p: dict, f: np.ndarray) -> np.ndarray:
    return f @ p["W_dec"].astype(np.float64) + p["b_dec"]


def write_npz(path: Path, params: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "params.npz", **params)
    return path / "params.npz"


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(64, D)).astype(np.float32)


def check_sae(sae, p: dict, x: np.ndarray, b_dec_in: bool = False) -> None:
    f = sae.encode(torch.from_numpy(x)).detach().numpy()
    ref = ref_encode(p, x, b_dec_in)
    np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-4)
    assert 0 < (ref > 0).mean() < 0.5  # the threshold really gates some positive pre-acts
    x_hat = sae.decode(torch.from_numpy(f)).detach().numpy()
    np.testing.assert_allclose(x_hat, ref_decode(p, ref), rtol=1e-4, atol=1e-3)


def test_gemma_scope_1_npz_residual(tmp_path, x):
    p = random_params()
    npz = write_npz(tmp_path / "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71", p)
    sae = load_sae(npz)
    check_sae(sae, p, x)
    assert type(sae).__name__ == "JumpReLUSAE"
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.metadata.model_name == "gemma-2-2b"
    assert sae.cfg.metadata.average_l0 == 71
    # the folder is accepted too, and an explicit hook overrides the path's
    assert load_sae(npz.parent, hook="blocks.1.hook_resid_post").cfg.metadata.hook_name == (
        "blocks.1.hook_resid_post"
    )


def test_gemma_scope_1_mlp_hook_and_lowercase_keys(tmp_path, x):
    p = random_params(2)
    lower = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in p.items()}
    npz = write_npz(tmp_path / "gemma-scope-2b-pt-mlp/layer_7/width_16k/average_l0_60", lower)
    sae = load_sae(npz)
    check_sae(sae, p, x)
    assert sae.cfg.metadata.hook_name == "blocks.7.hook_mlp_out"


def test_gemma_scope_1_embedding_is_rescaled_like_sae_lens(tmp_path, x):
    p = random_params(3)
    sae = load_sae(write_npz(tmp_path / "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6", p))
    assert sae.cfg.metadata.hook_name == "hook_embed"
    f = sae.encode(torch.from_numpy(x)).detach().numpy()
    # sae-lens divides W_enc by sqrt(d) and multiplies W_dec by sqrt(d)
    np.testing.assert_allclose(f, ref_encode(p, x / math.sqrt(D)), rtol=1e-5, atol=1e-4)
    scaled = {**p, "W_dec": p["W_dec"].astype(np.float64) * math.sqrt(D)}
    x_hat = sae.decode(torch.from_numpy(f)).detach().numpy()
    np.testing.assert_allclose(
        x_hat, ref_decode(scaled, f.astype(np.float64)), rtol=1e-4, atol=1e-3
    )


def test_clone_picks_canonical_then_l0_rules(tmp_path, x):
    width = tmp_path / "gemma-scope-2b-pt-mlp/layer_5/width_16k"
    for i, m in enumerate((40, 61, 90, 120)):
        write_npz(width / f"average_l0_{m}", random_params(10 + i))
    assert pick_sae_dir(width).name == "average_l0_90"  # closest to 100
    assert pick_sae_dir(width, "min_ge_60").name == "average_l0_61"  # study B
    assert pick_sae_dir(width, "120").name == "average_l0_120"
    with pytest.raises(CrosslayerError, match="L0 rule"):
        pick_sae_dir(width, "7")
    root = tmp_path / "gemma-scope-2b-pt-mlp"
    sae = load_sae(root, layer=5, l0_rule="min_ge_60")  # the only width is taken
    check_sae(sae, random_params(11), x)
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_mlp_out"
    write_npz(width / "canonical", random_params(20))
    check_sae(load_sae(width), random_params(20), x)
    with pytest.raises(CrosslayerError, match="which layer"):
        load_sae(root)


def test_min_ge_60_error_when_none_qualifies(tmp_path):
    width = tmp_path / "layer_1/width_16k"
    write_npz(width / "average_l0_20", random_params())
    with pytest.raises(CrosslayerError, match=">= 60"):
        pick_sae_dir(width, "min_ge_60")


def test_neuronpedia_id_from_sae_lens_yaml(tmp_path):
    canonical = tmp_path / "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"
    sae = load_sae(write_npz(canonical, random_params()))
    assert sae.cfg.metadata.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    assert neuronpedia_url(sae, 1234) == (
        "https://neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/1234"
    )
    other = load_sae(
        write_npz(
            tmp_path / "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_22", random_params()
        )
    )
    assert other.cfg.metadata.neuronpedia_id is None  # no dashboard for that SAE
    with pytest.raises(CrosslayerError, match="Neuronpedia"):
        neuronpedia_url(other, 1)


def test_gemma_scope_2_safetensors_with_config(tmp_path, x):
    p = random_params(4)
    folder = tmp_path / "gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_medium"
    folder.mkdir(parents=True)
    save_file({k.lower(): v for k, v in p.items()}, folder / "params.safetensors")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "jump_relu",
                "model_name": "gemma-v3-270m-pt",
                "hf_hook_point_in": "model.layers.12.output",
            }
        )
    )
    sae = load_sae(folder / "params.safetensors")
    check_sae(sae, p, x)
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    (folder / "config.json").unlink()  # hook name from the folder alone
    assert load_sae(folder).cfg.metadata.hook_name == "blocks.12.hook_resid_post"


def test_gemma_scope_2_affine_skip_transcoder(tmp_path, x):
    p = random_params(5, d_out=D + 4)
    skip = np.random.default_rng(6).normal(size=(D, D + 4)).astype(np.float32)
    folder = tmp_path / "transcoder/layer_3_width_16k_l0_medium_affine"
    folder.mkdir(parents=True)
    save_file(
        {**{k.lower(): v for k, v in p.items()}, "affine_skip_connection": skip},
        folder / "params.safetensors",
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
                "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output",
                "affine_connection": True,
            }
        )
    )
    tc = load_sae(folder)
    assert type(tc).__name__ == "JumpReLUSkipTranscoder"
    assert tc.cfg.metadata.hook_name == "blocks.3.hook_mlp_in"
    assert tc.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    out = tc(torch.from_numpy(x)).detach().numpy()
    ref = ref_decode(p, ref_encode(p, x)) + x.astype(np.float64) @ skip
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_sae_lens_directory(tmp_path, x, arch):
    from sae_lens import SAE

    cfg = {"architecture": arch, "d_in": D, "d_sae": N, "metadata": {"hook_name": "hook_embed"}}
    if arch == "topk":
        cfg["k"] = 5
    torch.manual_seed(0)
    sae = SAE.from_dict(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_()
    sae.save_model(tmp_path / "s")
    loaded = load_sae(tmp_path / "s")
    assert type(loaded) is type(sae)
    assert loaded.cfg.metadata.hook_name == "hook_embed"
    xt = torch.from_numpy(x)
    torch.testing.assert_close(loaded.encode(xt), sae.encode(xt))
    p = {k: v.detach().numpy() for k, v in sae.state_dict().items()}
    if arch == "jumprelu":  # sae-lens's own SAEs subtract b_dec from the input
        f = loaded.encode(xt).detach().numpy()
        np.testing.assert_allclose(f, ref_encode(p, x, b_dec_in=True), rtol=1e-5, atol=1e-4)
    else:
        assert ((loaded.encode(xt) != 0).sum(-1) <= 5).all()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("threshold"), "lacks threshold"),
        (lambda p: p.update(b_dec=np.zeros(D + 1, np.float32)), "b_dec has shape"),
        (lambda p: p.update(W_dec=np.zeros((N, D + 1), np.float32)), "W_dec has shape"),
        (lambda p: p["W_enc"].__setitem__((0, 0), np.nan), "NaN or infinite"),
        (lambda p: p["threshold"].__setitem__(3, np.inf), "NaN or infinite"),
    ],
)
def test_bad_npz(tmp_path, change, message):
    p = random_params()
    change(p)
    with pytest.raises(DataError, match=message) as err:
        load_sae(write_npz(tmp_path / "layer_1/width_16k/average_l0_50", p))
    assert "\n" not in str(err.value)


def test_unknown_release_and_id_say_how_to_list():
    with pytest.raises(CrosslayerError, match=r"list_releases\(\)"):
        load_sae("gemma-scope-2b-pt-rez-canonical/layer_20/width_16k/canonical")
    with pytest.raises(CrosslayerError, match=r"closest: .*layer_20/width_16k/canonical"):
        load_sae("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonicall")


def test_release_offline_without_cache_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(CrosslayerError, match="not in the local Hugging Face cache"):
        load_sae("gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium")


def test_not_an_sae(tmp_path):
    with pytest.raises(CrosslayerError, match="is not an SAE"):
        load_sae(tmp_path)


def test_hook_and_width_checked_against_model(tmp_path):
    from crosslayer.model import tiny_model

    model = tiny_model(n_layers=2, d_model=D)
    p = random_params()
    ok = write_npz(tmp_path / "gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_50", p)
    assert load_sae(ok, model=model).cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    deep = write_npz(tmp_path / "gemma-scope-2b-pt-res/layer_9/width_16k/average_l0_50", p)
    with pytest.raises(CrosslayerError, match="layer 9"):
        load_sae(deep, model=model)
    wide = write_npz(
        tmp_path / "gemma-scope-2b-pt-mlp/layer_0/width_16k/average_l0_50", random_params(d=D + 8)
    )
    with pytest.raises(CrosslayerError, match="d_in=24 does not match"):
        load_sae(wide, model=model)
    loose = write_npz(tmp_path / "elsewhere", p)
    with pytest.raises(CrosslayerError, match="which hook"):
        load_sae(loose, model=model)
