"""Which hooks study A reads: the (source, target) pair and the depth sweep's hooks.

Shared by the run and its plan (``crosslayer run --dry-run``), which resolves the same hooks
from the model's shape alone.
"""

from __future__ import annotations

from crosslayer.config import RunConfig
from crosslayer.errors import CrosslayerError
from crosslayer.model.hooks import hook_depth, parse_hook


def default_target(n_layers: int) -> str:
    """``resid_post`` of the block at about 70% depth (block 12 of 18 for Gemma 3 270M)."""
    return f"blocks.{max(0, int(0.7 * n_layers))}.hook_resid_post"


def pick_target(cfg: RunConfig, n_layers: int, sae_hook: str | None = None) -> str:
    """``cfg.target``, else the pretrained SAE's hook (an SAE says where it reads; the user
    need not say it twice), else :func:`default_target`."""
    return cfg.target or sae_hook or default_target(n_layers)


def check_order(source: str, target: str) -> None:
    """The target must come later in the forward pass than the source."""
    if hook_depth(target) <= hook_depth(source):
        raise CrosslayerError(
            f"target hook {target} is not deeper than source hook {source}",
            "pass a --target later in the forward pass than --source "
            "(e.g. --source hook_embed --target blocks.12.hook_resid_post)",
        )


def sweep_hooks(source: str, target: str) -> list[str]:
    """Hooks of the depth sweep: every ``resid_post`` deeper than the source, up to the target."""
    last = parse_hook(target).layer
    assert last is not None  # the target is deeper than the source, so it is a block hook
    deeper = [
        f"blocks.{layer}.hook_resid_post"
        for layer in range(last + 1)
        if hook_depth(f"blocks.{layer}.hook_resid_post") > hook_depth(source)
    ]
    return [source, *deeper]


def sweep_tokens(cfg: RunConfig) -> int:
    """Tokens of the depth-sweep store: ``sweep.tokens``, never more than the main store."""
    return min(cfg.sweep.tokens, cfg.tokens)
