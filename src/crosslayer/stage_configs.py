"""The config model of every stand-alone command: ``collect`` (:class:`CollectConfig`),
``train-sae`` (:class:`SAETrainConfig`), ``eval-sae`` (:class:`EvalSAEConfig`), ``layers``,
``contrast`` and ``interpret`` (what they computed, their ``results.json`` "config").
``crosslayer run`` has its own in :mod:`crosslayer.config`.

The same style as :class:`crosslayer.config.RunConfig`: pydantic v2, ``extra="forbid"`` (a
misspelt key is an error), a description on every field, ranges as ``Field`` constraints or
``Literal``; :func:`crosslayer.config.load_config` loads any of them from YAML/TOML. The CLI
takes each flag's default and help from these fields (``crosslayer.cli._options.option_for``),
so this module imports nothing heavy: the stage modules (``store.collect``, ``sae.train``,
``experiments.*``) re-export their own model from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crosslayer.errors import CrosslayerError

if TYPE_CHECKING:
    from crosslayer.store.reader import ActivationStore

DEFAULT_MODEL = "gemma-3-270m"  # crosslayer.model.DEFAULT_MODEL: shipped on PyPI
SHARD_TOKENS = 16384  # tokens per shard: one shard's activations fit in memory while written
BUILTIN = "builtin"  # the project's own 68 triples, src/crosslayer/data/contrast_triples.jsonl
StoreDtype = Literal["float32", "float16"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
MODEL_DTYPE_HELP = (
    "dtype the model computes in: auto (bfloat16 on CUDA, float32 on CPU), float32, or "
    "bfloat16 (opt-in on CPU: fast with AVX512-BF16 or AMX); stores stay float32/float16"
)

# study B's representation spaces (crosslayer.experiments.spaces); the first default is the headline
Space = Literal["raw", "centred", "standardised"]
DEFAULT_SPACES: tuple[Space, ...] = ("centred", "raw", "standardised")


class CollectConfig(BaseModel):
    """Everything ``crosslayer collect`` takes, as a config object (mirrors the CLI flags)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=DEFAULT_MODEL, description="Model alias, .gguf file, saved directory or HF id"
    )
    hooks: list[str] = Field(
        description="Hook names (TransformerLens) to store, e.g. hook_embed and "
        "blocks.12.hook_resid_post; comma-separated on the command line",
    )
    corpus: str = Field(
        default="builtin:wiki",
        description="builtin:wiki, builtin:news, a file/dir, or hf:PATH",
    )
    tokens: int = Field(gt=0, description="Sample tokens to store (BOS/pad/special excluded)")
    out: Path = Field(description="Store directory (created; resumed if it exists)")
    context_len: int = Field(default=128, ge=2, description="Tokens per context, BOS included")
    dtype: StoreDtype = Field(
        default="float32", description="Stored dtype: float32 or float16 (half the disk)"
    )
    batch_size: int = Field(default=8, gt=0, description="Contexts per forward pass")
    heldout_frac: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Fraction of documents held out (split by document, seeded)",
    )
    seed: int = Field(default=0, description="Seed of the train/held-out document split")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    model_dtype: ModelDtype = Field(default="auto", description=MODEL_DTYPE_HELP)
    text_field: str = Field(default="text", description="Text column of a jsonl/parquet/HF corpus")
    shard_tokens: int = Field(
        default=SHARD_TOKENS, gt=0, description="Tokens per shard (the unit of resume)"
    )
    compile: bool = Field(
        default=False,
        description="Compile the forward pass (Gemma 3; equal up to float rounding): "
        "collection ~1.1x faster in fp32 on a 2-core CPU after 15-20 s of compiling, so "
        "worth it from ~500k tokens",
    )

    @model_validator(mode="after")
    def _some_train_tokens(self) -> CollectConfig:
        if self.heldout_frac >= 1:
            raise CrosslayerError(
                f"--heldout-frac {self.heldout_frac:g} holds out every document: no train tokens",
                "use a fraction below 1, e.g. 0.1",
            )
        return self

    def run(self, *, progress: bool = True) -> ActivationStore:
        """Load the corpus and the model, then :func:`crosslayer.store.collect`."""
        # local: start-up cost (the CLI reads these models without torch)
        from crosslayer.corpus import load_corpus
        from crosslayer.fs import check_dir_path
        from crosslayer.model import load_model
        from crosslayer.store.collect import collect

        check_dir_path(self.out, itself=False)  # a file AT out: "is not an activation store"
        corpus = load_corpus(self.corpus, text_field=self.text_field)  # cheap: fail fast
        model = load_model(self.model, device=self.device, dtype=self.model_dtype)
        return collect(
            model,
            self.hooks,
            corpus=corpus,
            n_tokens=self.tokens,
            out=self.out,
            context_len=self.context_len,
            heldout_frac=self.heldout_frac,
            seed=self.seed,
            dtype=self.dtype,
            batch_size=self.batch_size,
            shard_tokens=self.shard_tokens,
            progress=progress,
            compile=self.compile,
        )


class SAETrainConfig(BaseModel):
    """How to train an SAE. Unknown keys are an error (``extra="forbid"``).

    The ranges of ``width``, ``target_l0``, ``batch_size``, ``epochs``, ``lr`` ... are
    checked by :func:`check_train_config` (shared rules with ``crosslayer run``, one-line
    errors), the others by the fields themselves.
    """

    model_config = ConfigDict(extra="forbid")

    arch: Literal["jumprelu", "topk"] = Field(
        default="jumprelu",
        description="SAE architecture: jumprelu (Gemma Scope's) or topk (L0 is exactly k)",
    )
    width: int = Field(default=4096, description="Number of latents")
    target_l0: float | None = Field(
        default=64,
        description="Target L0, active latents per token (TopK: k; JumpReLU: the Gemma Scope "
        "2 quadratic loss pulls L0 towards it; null: the plain L0 penalty of Gemma Scope 1, "
        "weighted by l0_coefficient)",
    )
    l0_coefficient: float = Field(
        default=1.0, description="Weight of the JumpReLU sparsity loss in the total loss"
    )
    n_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Training tokens (overrides epochs; null: epochs x the tokens given)",
    )
    epochs: int = Field(default=3, description="Passes over the store's training tokens")
    batch_size: int = Field(
        default=1024,
        description="Tokens per step (small: on CPU the budget is a few hundred steps, and the "
        "threshold and b_enc need steps more than large batches; "
        "benchmarks/results/sae_train.md)",
    )
    lr: float = Field(default=3e-3, description="Adam learning rate")
    lr_warm_up_steps: int = Field(
        default=0, ge=0, description="Steps of linear learning-rate warm-up from 0"
    )
    lr_decay_frac: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Linear decay of the learning rate to 0 over this last fraction of steps",
    )
    l0_warm_up_frac: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="The L0 coefficient ramps up from 0 over this first fraction of steps",
    )
    jumprelu_init_threshold: float = Field(
        default=0.1, gt=0, description="Initial JumpReLU threshold of every latent"
    )
    jumprelu_bandwidth: float = Field(
        default=0.05,
        gt=0,
        description="Width of the kernel of the JumpReLU straight-through gradient estimator",
    )
    jumprelu_threshold_lr_scale: float = Field(
        default=10.0,
        description="The threshold's own learning rate, lr x this factor (an extra Adam "
        "parameter group): Adam moves it by about lr per step while the pre-activations it "
        "tracks grow much faster, so in a few hundred CPU steps L0 would overshoot",
    )
    jumprelu_ste_to_input: bool = Field(
        default=False,
        description="Also pass the straight-through gradient to the encoder (Anthropic's "
        "variant: L0 reaches the target faster, but in our short runs most latents died); "
        "false: DeepMind's JumpReLU, sae-lens's default",
    )
    normalize_activations: Literal["expected_average_only_in", "none"] = Field(
        default="expected_average_only_in",
        description="Scale inputs to E|x| = sqrt(d) (folded into the weights at the end), or none",
    )
    init_b_dec: Literal["mean", "zeros"] = Field(
        default="mean",
        description="b_dec starts at the mean activation (mean), or at 0 as in sae-lens (zeros)",
    )
    n_batches_for_norm_estimate: int = Field(
        default=8, description="Batches read to estimate the normalisation scale"
    )
    dead_feature_window: int = Field(
        default=200, description="Steps without firing before a latent counts as dead"
    )
    shuffle_buffer: int = Field(
        default=2**17, ge=1, description="Tokens gathered and shuffled before batching"
    )
    n_checkpoints: int = Field(
        default=4, ge=0, description="Checkpoints written during training (resume after a crash)"
    )
    sparse_topk: bool = Field(
        default=True,
        description="TopK only: decode and take gradients through the k selected latents of "
        "each row instead of sae-lens's dense products (same loss and gradients up to float "
        "rounding; crosslayer.sae.sparse_topk)",
    )
    seed: int = Field(default=0, description="Seed of the initial weights and data order")
    device: str | None = Field(default=None, description="auto, cpu, cuda or cuda:N (null: auto)")


class LayersConfig(BaseModel):
    """What ``crosslayer layers`` computed (its ``results.json`` "config")."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(description="Prompts of the cosine maps (repeatable)")
    layers: list[int] = Field(
        description="Blocks, e.g. 0,6,12 or 0-17 on the command line (default all)"
    )
    sae_on_residual: bool = Field(
        default=False,
        description="Study B's choice: feed SAEs the residual stream, whatever hook they were "
        "trained on (warned)",
    )
    spaces: tuple[Space, ...] = Field(
        default=DEFAULT_SPACES,
        description="Representation spaces of the cosine maps (raw, centred, standardised; "
        "repeatable); the first is the headline, raw is the seed's",
    )
    store: str | None = Field(
        default=None,
        description="Store for corpus CKA + depth curve, and the corpus mean and sd of the "
        "spaces (default: the prompts' own tokens)",
    )
    depth_source: str = Field(
        default="hook_embed", description="Hook the depth curve predicts every layer from"
    )
    max_tokens: int | None = Field(
        default=None,
        ge=2,
        description="Tokens for the residual CKA (default: every stored token; else a seeded "
        "sample)",
    )
    sae_max_tokens: int = Field(
        default=4096,
        ge=2,
        description="Tokens for SAE-code CKA (a seeded sample: 16k-wide codes need the "
        "tokens x tokens Gram form)",
    )
    n_boot: int = Field(
        default=1000, ge=1, description="Bootstrap resamples (over contexts) of the CKA CIs"
    )
    seed: int = Field(default=0, description="Seed of the CKA token sample and bootstrap")


class ContrastConfig(BaseModel):
    """What ``crosslayer contrast`` computed (its ``results.json`` "config")."""

    model_config = ConfigDict(extra="forbid")
    items: str = Field(
        default=BUILTIN, description="builtin (68 shipped triples), or a .json / .jsonl file"
    )
    layers: list[int] | None = Field(
        default=None, description="Blocks, e.g. 0,6,12 or 0-17 (default all)"
    )
    sae_on_residual: bool = Field(
        default=False,
        description="Study B's choice: feed SAEs the residual stream, whatever hook they were "
        "trained on (warned)",
    )
    spaces: tuple[Space, ...] = Field(
        default=DEFAULT_SPACES,
        description="Representation spaces (raw, centred, standardised; repeatable); the first "
        "is the headline of the conclusions and plots, raw is the seed's",
    )
    store: str | None = Field(
        default=None,
        description="Store whose corpus mean and sd centre / standardise each layer (default: "
        "the items' own tokens)",
    )
    alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="Significance level (Benjamini-Hochberg across layers)",
    )
    n_resamples: int = Field(
        default=2000, ge=1, description="Bootstrap resamples of each confidence interval"
    )
    seed: int = Field(default=0, description="Seed of the bootstrap and CV folds")


class InterpretConfig(BaseModel):
    """What ``crosslayer interpret`` computed (its ``results.json`` "config")."""

    model_config = ConfigDict(extra="forbid")
    facts: str = Field(description="PARAREL file, e.g. data_nm.json")
    relation: str | None = Field(
        default=None, description="PARAREL relation, e.g. P101 (default: all)"
    )
    n_groups: int | None = Field(
        default=100, ge=1, description="First N fact groups (null: all of them)"
    )
    layers: list[int] = Field(description="Blocks with an SAE (default: all given)")
    top_k: int = Field(default=10, ge=1, description="Latents shown per fact group")
    before: bool = Field(default=False, description="Also read the token before the answer")
    promote_k: int = Field(
        default=20,
        ge=1,
        description="A top latent promotes the answer if an answer token is among the "
        "promote_k tokens its decoder direction promotes most (through the unembedding)",
    )
    sae_on_residual: bool = Field(
        default=False,
        description="Study B's choice: feed SAEs the residual stream, whatever hook they were "
        "trained on (warned)",
    )
    store: str | None = Field(default=None, description="Store for top-activating contexts")
    selection: Literal["contrastive", "top"] = Field(
        default="contrastive",
        description="Headline latent selection per group: contrastive (group mean code minus "
        "the other groups' mean) or top (raw mean code); both are reported",
    )
    n_permutations: int = Field(
        default=1000, ge=10, description="Draws of the permutation null (other groups' answers)"
    )
    n_null_draws: int = Field(
        default=1000, ge=10, description="Draws of the density-matched random-latent null"
    )
    null_neighbours: int = Field(
        default=20,
        ge=1,
        description="Each selected latent's stand-ins: its nearest firing latents in log "
        "density and log decoder norm",
    )
    logit_lens: bool = Field(
        default=True, description="Logit lens per block (next token and answer ranks)"
    )
    lens_tokens: int = Field(
        default=1000, ge=1, description="Next-token positions sampled for the logit lens"
    )
    lens_translator: bool = Field(
        default=False,
        description="Also fit a tuned-lens style affine translator per block (cross-fitted "
        "ridge to the last block's residual, out of fold by fact group)",
    )
    seed: int = Field(default=0, description="Seed of the nulls, bootstraps and lens sample")


class EvalSAEConfig(BaseModel):
    """Everything ``crosslayer eval-sae`` takes (mirrors the CLI flags)."""

    model_config = ConfigDict(extra="forbid")
    sae: str = Field(description="SAE folder/file, Gemma Scope clone or release/id")
    store: Path = Field(description="Store whose held-out tokens are used")
    hook: str | None = Field(default=None, description="Hook (default: the SAE's own)")
    model: str | None = Field(
        default=None, description="Model for CE loss recovered (e.g. gemma-3-270m)"
    )
    n_contexts: int = Field(
        default=16,
        ge=1,
        description="Held-out contexts for CE loss (each is one forward pass with and one "
        "without the SAE spliced in)",
    )
    out: Path | None = Field(default=None, description="Write the metrics as JSON here")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
