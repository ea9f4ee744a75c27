"""The protocols, with no vLLM import: shared randomness (``randomness``), inputs (``inputs``),
states (``state``) and validation rule (``validation``), and each protocol's own math and
messages in its folder (``distance/``, ``artifact/``).

Import the submodules; this package imports nothing itself, so that the client can load the
messages without torch.
"""

POW_PREFIX = "/api/v1/pow"
"""Every PoC route of every protocol lives under this path."""


def __getattr__(name: str) -> object:
    """``pseudo_token_ids`` on first use (it needs torch; the package itself does not)."""
    if name == "pseudo_token_ids":
        from vllm_poc.protocol.token_ids import pseudo_token_ids

        return pseudo_token_ids
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
