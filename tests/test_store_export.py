"""Export to SAELens's cached-activations format, read back by SAELens itself."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from sae_lens.training.activations_store import ActivationsStore

from crosslayer.errors import CrosslayerError
from crosslayer.model import tiny_model
from crosslayer.store import collect, export_saelens

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "store"
    return collect(tiny_model(), ["hook_embed", HOOK], corpus="builtin:news", n_tokens=2500,
                   out=out, context_len=32, shard_tokens=1000, heldout_frac=0.2,
                   progress=False)  # fmt: skip


def test_saelens_activations_store_reads_the_export(store, tmp_path):
    out = export_saelens(store, HOOK, tmp_path / "sae", context_size=16, split="train")
    train = np.flatnonzero(store.split == 0)
    n_seq = len(train) // 16
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == [HOOK, "token_ids"] and len(ds) == n_seq
    assert ds.features[HOOK].shape == (16, 64) and ds.features[HOOK].dtype == "float32"

    sae_store = ActivationsStore(
        model=None, dataset=None, streaming=False, hook_name=HOOK, hook_head_index=None,
        context_size=16, d_in=64, n_batches_in_buffer=2, total_training_tokens=n_seq * 16,
        store_batch_size_prompts=4, train_batch_size_tokens=64, prepend_bos=False,
        normalize_activations="none", device=torch.device("cpu"), dtype="float32",
        cached_activations_path=str(out),
    )  # fmt: skip
    acts = store.activations(HOOK)
    for batch in range(3):  # consecutive batches of 4 sequences x 16 tokens, in store order
        got, tokens = sae_store.get_raw_llm_batch()
        rows = train[batch * 64 : (batch + 1) * 64]
        np.testing.assert_array_equal(got.numpy(), acts[rows])
        np.testing.assert_array_equal(tokens.numpy(), store.tokens[rows])
    last = ds[n_seq - 1]  # the final full row; the < 16 leftover tokens are not exported
    np.testing.assert_array_equal(
        np.asarray(last[HOOK]), acts[train[(n_seq - 1) * 16 : n_seq * 16]]
    )


def test_export_too_small(store, tmp_path):
    with pytest.raises(CrosslayerError, match="fewer than one row of 4096"):
        export_saelens(store, HOOK, tmp_path / "x", context_size=4096, split="heldout")
    assert not (tmp_path / "x").exists()
