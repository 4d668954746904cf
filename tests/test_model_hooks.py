"""Hook points on tiny random Gemma 2 / Gemma 3 models, checked against HF's own outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.model import HookPoint, LoadedModel, hook_depth, parse_hook, tiny_model

FAMILIES = ["gemma2", "gemma3"]
SEQ = 13  # longer than the tiny models' sliding window (8), so local attention matters
DEVICE = resolve_device(None)  # CUDA when present: the hooks must work there too


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request: pytest.FixtureRequest) -> LoadedModel:
    # float32 everywhere so that exact comparisons are meaningful on a GPU too
    return tiny_model(request.param, n_layers=4, d_model=64, seed=0, dtype="float32")


def _ids(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 512, (batch, seq), generator=g).to(DEVICE)


def _hf(lm: LoadedModel, ids: torch.Tensor, **kw: torch.Tensor) -> object:
    with torch.inference_mode():
        return lm.model(input_ids=ids, output_hidden_states=True, **kw)


def test_residual_hooks_match_hf_hidden_states(lm: LoadedModel) -> None:
    ids = _ids()
    hs = _hf(lm, ids).hidden_states  # type: ignore[attr-defined]
    acts = lm.run_with_hooks(ids, hooks=lm.hook_names())
    assert len(hs) == lm.n_layers + 1
    assert torch.equal(acts["hook_embed"], hs[0])
    for layer in range(lm.n_layers):
        assert acts[f"blocks.{layer}.hook_resid_pre"].shape == (2, SEQ, lm.d_model)
        assert torch.equal(acts[f"blocks.{layer}.hook_resid_pre"], hs[layer])
    for layer in range(lm.n_layers - 1):
        assert torch.equal(acts[f"blocks.{layer}.hook_resid_post"], hs[layer + 1])
    # HF's last hidden state has the final norm applied; our resid_post does not.
    last = acts[f"blocks.{lm.n_layers - 1}.hook_resid_post"]
    assert not torch.allclose(last, hs[-1])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model.model.norm(last), hs[-1], rtol=0, atol=0)


def test_hook_embed_is_the_scaled_embedding(lm: LoadedModel) -> None:
    ids = _ids()
    raw = lm.model.get_input_embeddings().weight[ids]
    emb = lm.run_with_hooks(ids, hooks=["hook_embed"])["hook_embed"]
    # Gemma multiplies the embedding by sqrt(d_model) (Gemma 2 in the model's forward)
    torch.testing.assert_close(emb, raw * torch.tensor(lm.d_model**0.5, dtype=raw.dtype))


def test_sublayer_hooks_are_the_post_norm_outputs_and_sum_to_the_residual(
    lm: LoadedModel,
) -> None:
    ids = _ids()
    layer = lm.model.model.layers[2]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        layer.post_attention_layernorm.register_forward_hook(
            lambda _m, _a, o: seen.setdefault("attn", o)
        ),
        layer.post_feedforward_layernorm.register_forward_hook(
            lambda _m, _a, o: seen.setdefault("mlp", o)
        ),
    ]
    try:
        _hf(lm, ids)
    finally:
        for h in handles:
            h.remove()
    names = [f"blocks.2.hook_{k}" for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    a = lm.run_with_hooks(ids, hooks=names)
    pre, attn, mlp, post = (a[n] for n in names)
    assert torch.equal(attn, seen["attn"])
    assert torch.equal(mlp, seen["mlp"])
    assert torch.equal((pre + attn) + mlp, post)  # the block's own order of additions: exact


def _count_calls(modules: dict[str, nn.Module]) -> tuple[dict[str, int], list]:
    calls = dict.fromkeys(modules, 0)
    handles = [
        m.register_forward_pre_hook(lambda *_a, n=n: calls.__setitem__(n, calls[n] + 1))
        for n, m in modules.items()
    ]
    return calls, handles


@pytest.mark.parametrize(
    ("hook", "last_layer_run"),
    [("blocks.1.hook_resid_post", 1), ("blocks.2.hook_attn_out", 2), ("hook_embed", 0)],
)
def test_forward_stops_after_the_deepest_hook(
    lm: LoadedModel, hook: str, last_layer_run: int
) -> None:
    layers = lm.model.model.layers
    modules: dict[str, nn.Module] = {f"layer{i}": m for i, m in enumerate(layers)}
    modules |= {
        "norm": lm.model.model.norm,
        "lm_head": lm.model.lm_head,
        "mlp2": layers[2].mlp,
    }
    calls, handles = _count_calls(modules)
    try:
        lm.run_with_hooks(_ids(), hooks=[hook])
    finally:
        for h in handles:
            h.remove()
    for i in range(lm.n_layers):
        assert calls[f"layer{i}"] == int(i <= last_layer_run), (i, calls)
    assert calls["norm"] == calls["lm_head"] == 0
    assert calls["mlp2"] == 0  # attn_out of layer 2 stops before layer 2's MLP


def test_right_padding_matches_unbatched(lm: LoadedModel) -> None:
    lengths = [SEQ, 10]
    ids = _ids(batch=2)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0  # pad id
    hooks = ["hook_embed", "blocks.1.hook_mlp_out", "blocks.3.hook_resid_post"]
    batched = lm.run_with_hooks(ids, mask, hooks=hooks)
    for row, n in enumerate(lengths):
        single = lm.run_with_hooks(ids[row : row + 1, :n], hooks=hooks)
        for h in hooks:
            torch.testing.assert_close(batched[h][row, :n], single[h][0], rtol=1e-5, atol=1e-5)
    # the mask really reaches the model: without it the padded row's pad positions differ
    unmasked = lm.run_with_hooks(ids, hooks=["blocks.3.hook_resid_post"])
    assert not torch.allclose(unmasked["blocks.3.hook_resid_post"][1], batched[hooks[-1]][1])


def test_activations_accept_numpy_ids_and_support_backward(lm: LoadedModel) -> None:
    ids = _ids()
    want = lm.run_with_hooks(ids, hooks=["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    got = lm.run_with_hooks(ids.cpu().numpy().astype("int32"), hooks=["blocks.0.hook_resid_post"])
    x = got["blocks.0.hook_resid_post"]
    assert torch.equal(x, want)
    assert not x.is_inference() and not x.requires_grad
    w = torch.ones(lm.d_model, device=x.device, requires_grad=True)
    (x @ w).sum().backward()  # would raise for an inference-mode tensor
    assert w.grad is not None


def test_replacement_identity_gives_normal_logits(lm: LoadedModel) -> None:
    ids = _ids()
    normal = _hf(lm, ids).logits  # type: ignore[attr-defined]
    for hook in ("hook_embed", "blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"):
        got = lm.run_with_replacement(ids, hook=hook, fn=lambda x: x)
        assert torch.equal(got, normal), hook
    got = lm.run_with_replacement(ids, hook="blocks.1.hook_resid_post", fn=lambda x: x * 1.5)
    assert got.shape == normal.shape
    assert not torch.allclose(got, normal)


def test_replacement_at_last_layer_matches_manual_unembedding(lm: LoadedModel) -> None:
    ids = _ids()
    hook = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    seen: list[torch.Tensor] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return -x

    got = lm.run_with_replacement(ids, hook=hook, fn=fn)
    resid = lm.run_with_hooks(ids, hooks=[hook])[hook]
    assert torch.equal(seen[0], resid)  # fn sees exactly the hooked value
    with torch.inference_mode():
        want = lm.model.model.norm(-resid) @ lm.unembed()
        cap = lm.model.config.final_logit_softcapping
        if cap is not None:  # Gemma 2 soft-caps its logits
            want = torch.tanh(want / cap) * cap
    torch.testing.assert_close(got, want)


def test_run_from_equals_the_full_run_and_skips_the_blocks_before(lm: LoadedModel) -> None:
    """``run_from`` gives the logits of the full run with the same value at the hook, without
    running blocks 0 … L (local attention included: SEQ is longer than the window), and
    leaves the model as it was."""
    ids = _ids()
    normal = _hf(lm, ids).logits  # type: ignore[attr-defined]
    blocks = list(lm.model.model.layers)
    calls = [0] * len(blocks)
    handles = [
        b.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
    ]
    try:
        for L in (0, lm.n_layers - 2):
            hook = f"blocks.{L}.hook_resid_post"
            resid = lm.run_with_hooks(ids, hooks=[hook])[hook]
            value = resid * 1.5
            value[:, 3] = 0.0  # and one position replaced outright
            want = lm.run_with_replacement(ids, hook=hook, fn=lambda _, v=value: v)
            lm.run_from(ids, hook=hook, value=value)  # the first call looks at block 0 once
            calls[:] = [0] * len(blocks)
            got = lm.run_from(ids, hook=hook, value=value)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            assert not torch.allclose(got, normal)
            assert calls == [0] * (L + 1) + [1] * (lm.n_layers - L - 1), hook
    finally:
        for h in handles:
            h.remove()
    assert list(lm.model.model.layers) == blocks  # every block is back in place
    assert torch.equal(_hf(lm, ids).logits, normal)  # type: ignore[attr-defined]
    with pytest.raises(CrosslayerError, match="run_from starts after a block"):
        lm.run_from(ids, hook="blocks.1.hook_mlp_out", value=resid)


def test_replacement_with_wrong_shape_is_an_error(lm: LoadedModel) -> None:
    with pytest.raises(CrosslayerError, match="same shape"):
        lm.run_with_replacement(_ids(), hook="hook_embed", fn=lambda x: x[..., :3])


def test_unembed_is_the_lm_head(lm: LoadedModel) -> None:
    w_u = lm.unembed()
    assert w_u.shape == (lm.d_model, lm.model.config.vocab_size)
    assert torch.equal(w_u, lm.model.lm_head.weight.T)


def test_hook_names_are_complete_and_in_forward_order(lm: LoadedModel) -> None:
    names = lm.hook_names()
    assert len(names) == 1 + 4 * lm.n_layers
    assert names == sorted(names, key=hook_depth)
    assert names[:5] == [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]
    assert lm.validate_hooks(["blocks.3.hook_resid_post", "hook_embed", "hook_embed"]) == [
        "blocks.3.hook_resid_post",
        "hook_embed",
    ]


def test_parse_hook_and_depth() -> None:
    assert parse_hook("hook_embed") == HookPoint("embed", None)
    assert parse_hook("blocks.12.hook_mlp_out") == HookPoint("mlp_out", 12)
    assert parse_hook("blocks.12.hook_mlp_out").name == "blocks.12.hook_mlp_out"
    order = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
        "blocks.10.hook_resid_pre",
    ]
    assert sorted(reversed(order), key=hook_depth) == order


@pytest.mark.parametrize(
    "name",
    ["resid_post", "blocks.x.hook_resid_post", "blocks.3.hook_resid", "blocks.-1.hook_mlp_out", ""],
)
def test_unknown_hook_names_are_errors(lm: LoadedModel, name: str) -> None:
    with pytest.raises(CrosslayerError, match=r"unknown hook name.*blocks\.\{L\}\.hook_resid_post"):
        lm.validate_hooks([name])


def test_layer_out_of_range_names_the_layer_count(lm: LoadedModel) -> None:
    with pytest.raises(CrosslayerError, match=r"has 4 layers.*from 0 to 3"):
        lm.run_with_hooks(_ids(), hooks=["blocks.4.hook_resid_post"])
    with pytest.raises(CrosslayerError, match="has 4 layers"):
        lm.run_with_replacement(_ids(), hook="blocks.9.hook_mlp_out", fn=lambda x: x)


def test_bad_inputs_are_errors(lm: LoadedModel) -> None:
    with pytest.raises(CrosslayerError, match="no hook names"):
        lm.run_with_hooks(_ids(), hooks=[])
    with pytest.raises(CrosslayerError, match=r"expected \[batch, seq\]"):
        lm.run_with_hooks(_ids()[0], hooks=["hook_embed"])


def test_tiny_model_is_seeded_frozen_and_typed() -> None:
    a, b, c = (tiny_model("gemma3", seed=s) for s in (3, 3, 4))
    wa, wb, wc = (m.model.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not a.model.training
    assert not any(p.requires_grad for p in a.model.parameters())
    assert a.identity["n_layers"] == a.n_layers == 4 and a.identity["d_model"] == 64
    assert a.identity["weights"] == b.identity["weights"] != c.identity["weights"]
    bf = tiny_model("gemma2", n_layers=2, d_model=32, dtype="bfloat16")
    out = bf.run_with_hooks(_ids(), hooks=["blocks.1.hook_resid_post"])
    assert out["blocks.1.hook_resid_post"].dtype == torch.bfloat16
    assert out["blocks.1.hook_resid_post"].shape == (2, SEQ, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"family": "llama"}, "unknown tiny model family"), ({"d_model": 30}, "multiple of 4")],
)
def test_tiny_model_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(CrosslayerError, match=match):
        tiny_model(**kwargs)


def test_direction_logits_equal_the_models_logit_change_through_a_nontrivial_final_norm() -> None:
    """A small direction added to the last residual changes the logits by its direction
    logits (through the final norm's gain), to first order; without the gain they differ."""
    import torch

    from crosslayer.model.tiny import tiny_model

    lm = tiny_model("gemma3", seed=0)
    torch.manual_seed(0)
    norm = lm.model.model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight) * 3.0)  # gain 1 + w, far from 1
    gain = lm.final_norm_gain()
    torch.testing.assert_close(gain, 1.0 + norm.weight.float(), rtol=1e-4, atol=1e-4)
    x = torch.randn(1, 1, lm.d_model)
    x = x / x.pow(2).mean().sqrt()  # unit RMS, so the norm's scale is 1 at x
    v = torch.randn(1, lm.d_model) * 1e-3
    v = v - (v @ x[0, 0]) * x[0, 0] / x[0, 0].pow(2).sum()  # keep the RMS fixed to first order
    with torch.no_grad():
        delta = lm.model.lm_head(norm(x + v)) - lm.model.lm_head(norm(x))
    expected = lm.direction_logits(v)
    torch.testing.assert_close(delta[0, 0].double(), expected[0].double(), rtol=2e-2, atol=1e-5)
    plain = v @ lm.unembed().float()
    assert not torch.allclose(delta[0, 0], plain[0], rtol=0.2, atol=1e-5)
