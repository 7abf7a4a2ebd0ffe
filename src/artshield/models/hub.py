"""The Hugging Face hub as the model loaders see it: offline mode, a quick reachability probe, one-line
messages for the hub client's errors, and what counts as a hub id.

Imported by :mod:`.loading` (hub ids) and :mod:`.single_file` (configs for single checkpoint files), and by
any module that fetches from the hub (datasets, upscalers), so that every one of them fails the same way:
at once and in one line when the hub cannot be reached.
"""

from __future__ import annotations

import os
import re
import time

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# How long a "can the hub be reached?" answer is trusted, so that loading several models does not probe
# the network for each, while a machine that comes online is noticed soon after.
_REACHABILITY_TTL_S = 60.0
_reachability: tuple[float, bool] | None = None


def looks_like_hub_id(text: str) -> bool:
    """True for ``owner/name`` strings (what the hub accepts as a model id)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def hub_offline_mode() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flag = constants.is_offline_mode() if callable(getattr(constants, "is_offline_mode", None)) else constants.HF_HUB_OFFLINE
    # The hub reads the variables once at import; honour them if they were set later too.
    late = any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(flag) or late


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick request to the hub endpoint (through the hub client's own session, so proxies apply).

    Needed because huggingface_hub retries unreachable hosts with backoff for about half a minute before
    giving up; a machine with no network should get its one-line error at once.
    """
    global _reachability
    now = time.monotonic()
    if _reachability is not None and now - _reachability[0] < _REACHABILITY_TTL_S:
        return _reachability[1]
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        reachable = True
    except Exception:  # any failure (DNS, refused, timeout, offline mode) means "not reachable"
        reachable = False
    _reachability = (now, reachable)
    return reachable


def hub_online() -> bool:
    """Whether loaders may contact the hub: not in offline mode, and the hub answers."""
    return not hub_offline_mode() and hub_reachable()


def hub_errors() -> dict[str, type[BaseException]]:
    """The hub client's 'no such repo / gated / no such revision / no such file' exception classes, by name
    (those this huggingface_hub release has)."""
    import huggingface_hub.errors as errors

    return {
        name: getattr(errors, name)
        for name in ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError")
        if hasattr(errors, name)
    }


def hub_error_message(repo_id: str, exc: BaseException, what: str = "model") -> str | None:
    """A one-line explanation for the hub client's 'no such repo / gated / no such revision' errors."""
    errors = hub_errors()
    if "GatedRepoError" in errors and isinstance(exc, errors["GatedRepoError"]):
        return (
            f"{what} {repo_id!r} is gated: accept its licence on the hub and log in (`hf auth login`), then retry."
        )
    if "RepositoryNotFoundError" in errors and isinstance(exc, errors["RepositoryNotFoundError"]):
        return f"{what} {repo_id!r} does not exist on the hub (or is private: log in with `hf auth login`)."
    if "RevisionNotFoundError" in errors and isinstance(exc, errors["RevisionNotFoundError"]):
        return f"{what} {repo_id!r}: no such revision on the hub ({first_line(exc)})."
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages run to paragraphs), at most 300 chars."""
    text = str(exc).strip() or type(exc).__name__
    # Strip terminal escapes some libraries put in messages (torch's bold "do those steps only if ...").
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text.splitlines()[0][:300]


__all__ = [
    "first_line",
    "hub_error_message",
    "hub_errors",
    "hub_offline_mode",
    "hub_online",
    "hub_reachable",
    "looks_like_hub_id",
]
