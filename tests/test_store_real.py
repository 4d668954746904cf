"""The real Gemma 3 270M: stored activations equal HF's hidden states on the same contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslayer.corpus import iter_contexts, load_corpus
from crosslayer.model import load_model
from crosslayer.store import collect


@pytest.mark.real_model
def test_real_model_store_equals_hf_hidden_states(tmp_path):
    lm = load_model("gemma-3-270m", device="cpu")
    hooks = ["hook_embed", "blocks.5.hook_resid_post"]
    store = collect(lm, hooks, corpus="builtin:wiki", n_tokens=2000, out=tmp_path / "s",
                    shard_tokens=768, progress=False)  # fmt: skip
    assert store.n_tokens == 2000 and store.d("hook_embed") == 640

    want: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    n = 0
    for ctx in iter_contexts(load_corpus("builtin:wiki"), lm.tokenizer, context_len=128):
        pos = np.flatnonzero(ctx.sample)[: 2000 - n]
        with torch.inference_mode():
            hs = lm.model(torch.from_numpy(ctx.tokens[None]), output_hidden_states=True)
        want["hook_embed"].append(hs.hidden_states[0][0, pos].numpy())
        want["blocks.5.hook_resid_post"].append(hs.hidden_states[6][0, pos].numpy())
        n += len(pos)
        if n == 2000:
            break
    for h in hooks:
        got, ref = store.activations(h)[:], np.concatenate(want[h])
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)
