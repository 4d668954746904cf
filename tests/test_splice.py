"""The transcoder as a saved artefact, and splicing it (or any map) into a tiny Gemma 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.model import LoadedModel, splice, tiny_model
from crosslayer.transcoder import AffineTranscoder

SOURCE, TARGET = "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"
DEVICE = resolve_device(None)  # CUDA when present: the splice must work there too
EXACT = DEVICE.type == "cpu"  # bit-identical on CPU; on a GPU kernels may round differently


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_model("gemma3", n_layers=4, d_model=32, seed=0, dtype="float32", device=DEVICE)


def _ids(seed: int = 1, batch: int = 3, seq: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 512, (batch, seq), generator=g).to(DEVICE)


def _acts(lm: LoadedModel, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    acts = lm.run_with_hooks(ids, hooks=[SOURCE, TARGET])
    d = lm.d_model
    return (
        acts[SOURCE].reshape(-1, d).double().cpu().numpy(),
        acts[TARGET].reshape(-1, d).double().cpu().numpy(),
    )


@pytest.fixture(scope="module")
def fitted(lm: LoadedModel) -> AffineTranscoder:
    x, y = _acts(lm, _ids(seed=7, batch=16, seq=16))
    return AffineTranscoder(alphas=[1e-3, 1e-1]).fit(x, y)


@pytest.fixture(scope="module")
def saved(fitted: AffineTranscoder, lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tc") / "transcoder"
    fitted.save_pretrained(d, source_hook=SOURCE, target_hook=TARGET, model=lm.identity)
    return d


# --------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained


def test_reloaded_transcoder_predicts_identically_and_keeps_its_statistics(
    fitted: AffineTranscoder, saved: Path, lm: LoadedModel
) -> None:
    back = AffineTranscoder.from_pretrained(saved)
    x, y = _acts(lm, _ids(seed=3))
    np.testing.assert_array_equal(back.predict(x), fitted.predict(x))
    np.testing.assert_array_equal(back.coef_, fitted.coef_)  # float64 kept, not rounded
    assert back.score(x, y) == fitted.score(x, y)
    cfg = json.loads((saved / "cfg.json").read_text())
    assert (cfg["source_hook"], cfg["target_hook"]) == (SOURCE, TARGET)
    assert cfg["model"]["weights"] == lm.identity["weights"]
    assert cfg["alpha"] == fitted.alpha_ and cfg["alpha_criterion"] == "gcv"
    assert cfg["n_train"] == 16 * 16 == back.n_train_
    # the saved means are the training means (independent numpy reference)
    xt, yt = _acts(lm, _ids(seed=7, batch=16, seq=16))
    np.testing.assert_allclose(back.x_mean_, xt.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.y_mean_, yt.mean(0), rtol=1e-12, atol=1e-12)
    # saving the reloaded one again gives the same artefact
    again = back.save_pretrained(saved.parent / "again")
    assert json.loads((again / "cfg.json").read_text()) == cfg


def test_from_pretrained_refuses_a_missing_or_damaged_directory(saved: Path, tmp_path: Path):
    with pytest.raises(CrosslayerError, match="no saved transcoder"):
        AffineTranscoder.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    cfg = json.loads((saved / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps(cfg | {"d_in": 3}))
    with pytest.raises(CrosslayerError, match=r"cfg\.json says"):
        AffineTranscoder.from_pretrained(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CrosslayerError, match="not a crosslayer transcoder"):
        AffineTranscoder.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------
# splice


def test_splice_changes_exactly_the_target_hook(saved: Path, lm: LoadedModel) -> None:
    tc = AffineTranscoder.from_pretrained(saved)
    ids = _ids()
    hooks = lm.hook_names()
    clean = lm.run_with_hooks(ids, hooks=hooks)
    with torch.inference_mode():
        clean_logits = lm.model(input_ids=ids).logits
    with splice(lm, tc):
        spliced = lm.run_with_hooks(ids, hooks=hooks)
        with torch.inference_mode():
            logits = lm.model(input_ids=ids).logits
    target_at = hooks.index(TARGET)
    for name in hooks[:target_at]:  # everything before the target is untouched
        assert torch.equal(spliced[name], clean[name]), name
    # the target is T(source) of the same pass, as T.predict computes it
    x = clean[SOURCE].reshape(-1, lm.d_model).cpu().numpy()
    want = tc.predict(x).reshape(clean[TARGET].shape)
    tol = 0 if EXACT else 1e-5
    np.testing.assert_allclose(spliced[TARGET].cpu().numpy(), want, rtol=tol, atol=tol)
    assert not torch.allclose(spliced[TARGET], clean[TARGET])
    # the next hook (resid_pre of the next layer) reads the spliced value, later ones differ
    assert torch.equal(spliced[hooks[target_at + 1]], spliced[TARGET])
    assert not torch.allclose(logits, clean_logits)
    # after the block: no hooks left, clean logits again
    with torch.inference_mode():
        after = lm.model(input_ids=ids).logits
    assert torch.equal(after, clean_logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_splice_removes_its_hooks_on_an_exception(saved: Path, lm: LoadedModel) -> None:
    tc = AffineTranscoder.from_pretrained(saved)
    with pytest.raises(RuntimeError, match="boom"), splice(lm, tc):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_generic_splice_passes_the_source_and_input_ids(lm: LoadedModel) -> None:
    ids = _ids()
    clean = lm.run_with_hooks(ids, hooks=["hook_embed", TARGET])
    seen: dict[str, torch.Tensor] = {}

    def fn(src: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        assert input_ids is not None
        seen["src"], seen["ids"] = src.clone(), input_ids.clone()
        return 2 * src

    with splice(lm, TARGET, fn, source_hook="hook_embed"):
        got = lm.run_with_hooks(ids, hooks=[TARGET])[TARGET]
    assert torch.equal(seen["ids"], ids)
    assert torch.equal(seen["src"], clean["hook_embed"])
    assert torch.equal(got, 2 * clean["hook_embed"])
    # the same code path as run_with_replacement: identical logits for the same replacement
    with splice(lm, TARGET, lambda v, _ids: v * 0.5), torch.inference_mode():
        a = lm.model(input_ids=ids).logits
    b = lm.run_with_replacement(ids, hook=TARGET, fn=lambda v: v * 0.5)
    assert torch.equal(a, b)


def test_splice_refuses_what_cannot_be_spliced(saved: Path, lm: LoadedModel) -> None:
    with (
        pytest.raises(CrosslayerError, match="fires after"),
        splice(lm, SOURCE, lambda v, _i: v, source_hook=TARGET),
    ):
        pass
    with pytest.raises(CrosslayerError, match="no function"), splice(lm, TARGET):
        pass
    rng = np.random.default_rng(0)
    unsaved = AffineTranscoder().fit(rng.normal(size=(50, 32)), rng.normal(size=(50, 32)))
    with pytest.raises(CrosslayerError, match="does not know its source"), splice(lm, unsaved):
        pass
    other = tiny_model("gemma3", n_layers=4, d_model=32, seed=5, dtype="float32", device=DEVICE)
    tc = AffineTranscoder.from_pretrained(saved)
    with pytest.raises(CrosslayerError, match="fitted on model weights"), splice(other, tc):
        pass
    with splice(other, tc, check_model=False):  # the user may insist
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())
