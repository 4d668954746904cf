"""Study B experiment 3: PARAREL reading, answer positions, top latents, promotion, links."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crosslayer.cli import main
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.interpret import answer_position, run_interpret
from crosslayer.experiments.pararel import Fact, read_facts
from crosslayer.model import tiny_model
from crosslayer.store import collect
from tests.test_layers import make_sae


@pytest.fixture(scope="module")
def lm():
    return tiny_model(n_layers=3, d_model=64)


def write(tmp_path, groups) -> str:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(groups))
    return str(path)


def test_reads_pararel_and_filters(shared_data):
    groups = read_facts(shared_data / "pararel" / "data_nm.json", relation="P101", n_groups=5)
    assert len(groups) == 5 and groups[0][0].answer == "logic"
    assert groups[0][0].text == "Alan Turing works in the field of logic."
    other = read_facts(shared_data / "pararel" / "data_11.json", n_groups=2)
    assert len(other) == 2


@pytest.mark.parametrize(
    ("groups", "kwargs", "message"),
    [
        ([[["No mask here.", "x", "P1(a)"]]], {}, r"group 0 entry 0: '\[MASK\]' absent"),
        (
            [[["[MASK] rocks.", "x", "P1(a)"], ["A [MASK].", " ", "P1(a)"]]],
            {},
            "entry 1: empty answer",
        ),
        (
            [[["A [MASK].", "x", "P1(a)"]]],
            {"relation": "P9"},
            "relation 'P9' is not in .* one of P1",
        ),
        ([[["A [MASK].", "x"]]], {}, "group 0 entry 0 is not"),
    ],
)
def test_bad_facts_are_named(tmp_path, groups, kwargs, message):
    with pytest.raises(CrosslayerError, match=message):
        read_facts(write(tmp_path, groups), **kwargs)


def test_first_answer_token_position(lm):
    tok = lm.tokenizer
    fact = Fact(0, "Alan Turing works in the field of [MASK].", "logic", "P101")
    ids, pos = answer_position(lm, fact)
    prefix = tok("Alan Turing works in the field of", add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids[1:pos] == prefix
    assert tok.decode(ids[pos:-1]).strip() == "logic"
    ids, pos = answer_position(lm, Fact(0, "[MASK] is the field of Alan.", "physics", "P101"))
    assert pos == 1 and tok.decode(ids[1:3]).startswith("ph")


def test_top_latents_promotion_and_links(lm, tmp_path):
    facts = [
        [
            Fact(0, "Turing works in [MASK].", "logic", "P"),
            Fact(0, "Turing studied [MASK].", "logic", "P"),
        ],
        [Fact(1, "Curie works in [MASK].", "physics", "P")],
    ]
    sae = make_sae("blocks.1.hook_mlp_out", d_sae=40)
    sae.cfg.metadata.neuronpedia_id = "gemma-2-2b/1-gemmascope-mlp-16k"
    answer_ids = {answer_position(lm, f)[0][answer_position(lm, f)[1]] for g in facts for f in g}
    w_u = lm.unembed().float()
    with torch.no_grad():  # every decoder row points at one answer token's unembedding
        sae.W_dec[:] = w_u[:, sorted(answer_ids)[0]]
    store = collect(
        lm,
        ["blocks.1.hook_mlp_out"],
        corpus="builtin:news",
        n_tokens=300,
        out=tmp_path / "store",
        context_len=32,
        progress=False,
    )
    res = run_interpret(
        lm, facts, {1: sae}, top_k=3, before=True, store=store, n_contexts=2, out=tmp_path / "o"
    )

    # top latents = argsort of the mean code of each group, computed independently
    codes = []
    for f in facts[0]:
        ids, pos = answer_position(lm, f)
        x = lm.run_with_hooks(torch.tensor([ids]), hooks=["blocks.1.hook_mlp_out"])
        codes.append(sae.encode(x["blocks.1.hook_mlp_out"][0, pos]).detach().numpy())
    mean = np.mean(codes, 0)
    row = res.layers["answer"][0]
    assert row["top_latents"][0] == list(np.argsort(-mean)[:3])
    # the answer token is promoted only where the group's answer is that token
    first = sorted(answer_ids)[0]
    expect = [
        any(answer_position(lm, f)[0][answer_position(lm, f)[1]] == first for f in g) for g in facts
    ]
    assert row["promotes_answer"] == expect
    info = res.latents[0]
    assert (
        info.neuronpedia == f"https://neuronpedia.org/gemma-2-2b/1-gemmascope-mlp-16k/{info.index}"
    )
    assert info.promoted[0][0] == lm.tokenizer.decode([first])
    all_codes = sae.encode(torch.as_tensor(store.activations("blocks.1.hook_mlp_out")[:])).detach()
    assert info.density == pytest.approx(float((all_codes[:, info.index] > 0).float().mean()))
    assert max(c["max"] for c in info.contexts) == pytest.approx(
        float(all_codes[:, info.index].max()), rel=1e-5
    )
    assert res.maps["before"]["topic_by_topic"][1].shape == (2, 2)
    assert 0 <= res.groups[0]["model_top10"] <= 1
    for name in (
        "results.json",
        "latents.html",
        "promotes_answer.png",
        "topic_by_topic_before.png",
    ):
        assert (tmp_path / "o" / name).is_file()


def test_cli_errors(tmp_path, capsys):
    facts = write(tmp_path, [[["A [MASK].", "x", "P1(a)"]]])
    assert main(["interpret", "--facts", facts, "--out", str(tmp_path / "o")]) == 2
    assert "needs SAEs" in capsys.readouterr().err
    assert (
        main(
            [
                "interpret",
                "--facts",
                facts,
                "--relation",
                "P7",
                "--sae",
                "1=x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "relation 'P7' is not in" in capsys.readouterr().err
