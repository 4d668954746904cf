"""``run_study_a``: study A's stages, in order. Each stage lives in its own module."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import partial
from typing import Any

import numpy as np

from crosslayer import fs
from crosslayer.config import RunConfig
from crosslayer.experiments.study_a.comparison import compare_saes
from crosslayer.experiments.study_a.decomposition import run_decomposition
from crosslayer.experiments.study_a.dictionaries import run_dictionaries
from crosslayer.experiments.study_a.emergence import EmergenceInputs, run_emergence
from crosslayer.experiments.study_a.features import add_columns, analyse_sae
from crosslayer.experiments.study_a.inputs import (
    check_split,
    collect_stores,
    load_data,
    prepare_corpora,
    resolve_hooks,
)
from crosslayer.experiments.study_a.plots import write_plots
from crosslayer.experiments.study_a.results import SCHEMA, SCHEMA_VERSION, STUDY_REFERENCE
from crosslayer.experiments.study_a.run import JsonFile, open_run
from crosslayer.experiments.study_a.saes import sae_report
from crosslayer.experiments.study_a.sweep import run_depth_sweep
from crosslayer.experiments.study_a.transcoders import (
    fit_transcoders,
    mean_only_metrics,
    residuals,
)
from crosslayer.model import LoadedModel, load_model
from crosslayer.plan import check_run
from crosslayer.provenance import versions
from crosslayer.report import write_report
from crosslayer.rundir import STORE, SWEEP_STORE, TRAINED_SAES, sae_path
from crosslayer.sae import load_sae
from crosslayer.verify import forget_checksums, record_checksums


def run_study_a(
    cfg: RunConfig | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run study A as configured and return the contents of ``results.json`` plus ``out``.

    ``model``: an already loaded :class:`~crosslayer.model.LoadedModel` to use instead of
    loading ``cfg.model`` (tests pass a tiny one). Outputs go to ``cfg.out``; rerunning with
    the same config reuses every finished stage. ``out`` in the returned dict is the run
    directory (``results.json`` itself holds only paths relative to it). The last file
    written is ``checksums.json`` (sha256 of the run's files, for ``crosslayer verify``).
    """
    cfg = cfg or RunConfig()
    check_run(cfg, model)  # everything checkable before the run directory exists
    run = open_run(cfg, progress)
    # Files are about to change: a checksums.json from an earlier attempt would call them
    # damaged. It comes back, complete, when the run finishes.
    forget_checksums(run.out)
    started = time.perf_counter()

    # 1. model, pretrained SAE, hooks; the corpus and both splits checked before any work
    with run.stage("load", f"loading {cfg.model if model is None else model.spec}"):
        load = partial(load_model, cfg.model, device=cfg.device, dtype=cfg.model_dtype)
        lm = model if model is not None else load()
        pretrained = None if cfg.sae is None else load_sae(cfg.sae, model=lm, device=cfg.device)
        hooks = resolve_hooks(cfg, lm, pretrained)
        corpora = prepare_corpora(cfg, lm.tokenizer)
    plan = corpora.split
    run.say(
        f"{hooks.source} → {hooks.target}; {plan.n_train:,} train tokens ({plan.docs_train} "
        f"docs), {plan.n_heldout:,} held-out ({plan.docs_heldout} docs)"
    )

    # 2. activations (the split as collected, not as planned, is what counts)
    store, sweep_store = collect_stores(run, lm, corpora, hooks)
    data = load_data(store, hooks)
    split = data.split_counts(store)
    check_split(split, cfg)

    # 3-4. transcoders, residuals
    transcoders = fit_transcoders(run, data)
    R_train = residuals(transcoders.ridge, data.X_train, data.Y_train)
    R_heldout = residuals(transcoders.ridge, data.X_heldout, data.Y_heldout)

    # 5. SAEs: baseline on the target, residual on the residuals, same config and tokens
    dictionaries = run_dictionaries(run, hooks, lm.identity, data, (R_train, R_heldout), store)
    saes = dictionaries.seed0()
    sae_inputs = {"baseline": (data.Y_train, data.Y_heldout), "residual": (R_train, R_heldout)}
    if pretrained is not None:
        saes["pretrained"] = pretrained
        sae_inputs["pretrained"] = (data.Y_train, data.Y_heldout)

    # 6-7. probes, per-feature analysis, contexts (rows: store row of each train+held-out row)
    rows = np.concatenate([data.train_idx, data.heldout_idx])
    features: dict[str, dict[str, Any]] = {}
    sae_reports: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        x_train, x_heldout = sae_inputs[name]
        with run.stage(f"probes_{name}", f"probing every alive feature of the {name} SAE"):
            analyse = partial(
                analyse_sae, run, name, sae, data, x_train, x_heldout, rows, store, lm.tokenizer
            )
            features[name] = run.cached(JsonFile(run.dirs.features(name)), analyse)
            sae_reports[name] = sae_report(run, name, sae, x_heldout)
    comparison = compare_saes(
        run, features, dictionaries.scored, dictionaries.saes, dictionaries.removals
    )

    # 8. layer decomposition (target and sweep layers); the depth sweep reads its linear EV
    decomposition = run_decomposition(run, store, sweep_store, hooks, lm)
    depth = None if sweep_store is None else run_depth_sweep(run, sweep_store, hooks, decomposition)

    # 8b. emergence: every feature of every seed-0 dictionary from every layer of the sweep
    emergence = None
    if sweep_store is not None and cfg.emergence.enabled:
        dicts = dict(saes) | dictionaries.seed0(("placebo",))
        placebo = dictionaries.placebo
        inputs = {}
        if placebo is not None:
            ridge = transcoders.ridge
            inputs["placebo"] = lambda X, Y: placebo.transform(Y, residuals(ridge, X, Y))
        # the taxonomy of every further seed, and the matrix of a sample of its features
        # (emergence.seed_features): its shares and medians get seed-level CIs
        more = {n: dictionaries.saes[n][1:] for n in dicts if n in dictionaries.saes}
        what = EmergenceInputs(
            sweep_store, hooks, dicts, transcoders.ridge, inputs=inputs, seed_saes=more
        )
        emergence = run_emergence(run, what)
        for name in features:
            add_columns(run.dirs.feature_table(name), emergence["features"].get(name))

    # 9. results.json, plots, report: the report reads results.json, so it comes last
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # Paths are relative to the run directory and the config leaves out `out`, so the
        # same config and seed give the same file wherever the run is written.
        "config": cfg.model_dump(mode="json", exclude={"out"}),
        "config_hash": cfg.hash(),
        "versions": versions(),
        "model": lm.identity,
        "hooks": {"source": hooks.source, "target": hooks.target},
        "data": {
            "corpus": corpora.main.identity(),
            "n_tokens": int(store.n_tokens),
            "n_train": split.n_train,
            "n_heldout": split.n_heldout,
            "docs_train": split.docs_train,
            "docs_heldout": split.docs_heldout,
            "d_model": int(lm.d_model),
            "store": STORE,
            "sweep_store": None if sweep_store is None else SWEEP_STORE,
        },
        "study_reference": STUDY_REFERENCE,
        # the mean-only row sits outside the transcoder checkpoint: cheap, and older runs get it
        "transcoder": transcoders.metrics | {"mean_only": mean_only_metrics(data)},
        "saes": {
            name: sae_reports[name] | {"path": sae_path(name) if name in TRAINED_SAES else cfg.sae}
            for name in saes
        },
        "features": features,
        "comparison": comparison,
        "depth_sweep": depth,
        "emergence": None if emergence is None else emergence["emergence"],
        "taxonomy": None if emergence is None else emergence["taxonomy"],
        "decomposition": decomposition,
        "timings": run.timings | {"total": round(time.perf_counter() - started, 2)},
    }
    results = fs.jsonable(results)
    with run.stage("plots", "writing plots"):
        results["plots"] = write_plots(results, run.out)
    fs.atomic_write_json(run.dirs.results, results)
    with run.stage("report", "writing report.html"):
        write_report(run.out, model=lm)
    record_checksums(run.out)
    return dict(results) | {"out": str(run.out)}
