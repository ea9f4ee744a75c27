"""The compatibility layer's own error and the installed vLLM release."""

from __future__ import annotations


class SeamNotFound(RuntimeError):
    """A vLLM seam the plugin needs is missing from this release: PoC cannot run."""

    def __init__(self, seam: str, detail: str) -> None:
        super().__init__(
            f"vllm-poc: VLLM_POC_ENABLED is set but {seam} was not found in vLLM "
            f"{vllm_version()} ({detail}); refusing to serve without PoC. Install a supported "
            "vLLM release (see the README) or unset VLLM_POC_ENABLED."
        )
        self.seam = seam


def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")
