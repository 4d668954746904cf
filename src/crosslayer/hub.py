"""The Hugging Face hub, when there may be no network: the local cache first, one line else.

Without a network the hub client retries each request with backoff and logs every retry,
about ten lines before its own error. Here a model, dataset or SAE that is not in the local
cache is refused at once, in one line, when an offline variable is set or the hub's host
does not resolve; a path that still reaches the client does so with its retry logging off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

from crosslayer.errors import CrosslayerError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
DNS_TIMEOUT_S = 3.0
_NOISY_LOGGERS = ("huggingface_hub", "datasets", "urllib3", "httpx", "filelock", "fsspec")


def offline_var() -> str | None:
    """The first HF offline variable that is set to a true value, else None."""
    for name in OFFLINE_VARS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def hub_host() -> str:
    """The host of the hub endpoint (``HF_ENDPOINT`` or huggingface.co)."""
    # local: start-up cost (huggingface_hub)
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def resolves(host: str, timeout: float = DNS_TIMEOUT_S) -> bool:
    """True if ``host`` resolves within ``timeout`` seconds (no connection is made)."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except (OSError, UnicodeError):  # socket.gaierror is an OSError
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)  # a hung resolver is left behind
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def require_hub(what: str, fix: str) -> None:
    """Raise a one-line error at once if the hub cannot be reached for ``what``.

    ``what`` says what is missing locally (e.g. "model 'google/gemma-2-2b' is not in the
    local Hugging Face cache"); ``fix`` how to get it without a network.
    """
    var = offline_var()
    if var is not None:
        raise CrosslayerError(f"{what}, and {var} is set (offline)", fix)
    host = hub_host()
    if not resolves(host):
        raise CrosslayerError(f"{what}, and the hub ({host}) cannot be reached: no network", fix)


def offline_fix(kind: str, name: str) -> str:
    """How to get a hub model or dataset onto a machine with no network."""
    if kind == "dataset":  # streamed: a cache copy does not help, a saved copy does
        return (
            f"on a machine with network save it (datasets.load_dataset({name!r})"
            ".save_to_disk(DIR)), copy DIR here and pass --corpus DIR"
        )
    return (
        f"on a machine with network run `huggingface-cli download {name}` and copy the HF "
        "cache (~/.cache/huggingface) here, or save it with save_pretrained and pass --model DIR"
    )


def model_in_cache(repo_id: str) -> bool:
    """True if ``repo_id``'s config.json is in the local hub cache (no network)."""
    # local: start-up cost (huggingface_hub)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # not a valid repo id: the loader gives the clearer error
        return False


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the hub clients' retry and warning logs while a request runs."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)
