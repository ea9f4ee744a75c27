"""The worker extension: ``poc_*`` methods that vLLM mixes into its worker class.

The API server reaches them with ``engine_client.collective_rpc("poc_...")``; they take and
return plain data (strings, ints, lists of floats), never tensors.

An operator's own ``--worker-extension-cls`` is kept: vLLM accepts one class, so the plugin
names a class of this module that inherits from both (see ``extension_qualname``).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from vllm_poc.work import Work
from vllm_poc.worker.artifacts import ArtifactForward
from vllm_poc.worker.forward import PoCForward

_COMBINED_PREFIX = "PoCWorkerExtensionWith_"


class PoCWorkerExtension:
    """Methods run inside every worker (all TP and PP ranks)."""

    def poc_run(self, work: dict[str, Any]) -> list[float] | list[str] | None:
        """One ``Work`` unit (its ``payload``): distances, or artifacts (base64; ``[]`` for a
        batch rejected as non-finite); None on ranks that do not hold the answer."""
        unit = Work.from_payload(work)
        if unit.kind == "artifacts":
            return self._poc_artifacts().artifacts(unit)
        return self._poc_forward().distances(unit)

    def poc_compilations(self) -> dict[str, int]:
        """Graphs compiled so far by each PoC forward: one per round shape, never per round."""
        return self._poc_artifacts().compilations()

    def poc_profile_artifacts(self, batch: int, seq_len: int, reps: int = 5) -> dict[str, float]:
        """Median ms of an artifact batch, a distance batch and bare forwards; for benchmarks."""
        from vllm_poc.worker.profiling import profile_artifacts

        return profile_artifacts(self._poc_forward(), self._poc_artifacts(), batch, seq_len, reps)

    def poc_ready(self) -> str:
        """The plugin version: the API server checks at start that every worker answers."""
        from vllm_poc import __version__

        return __version__

    def poc_unsupported(self) -> list[str]:
        """Why this worker's model cannot run PoC, one line per reason (empty: it can)."""
        return self._poc_forward().unsupported()

    def poc_weight_digests(self) -> dict[str, str]:
        """sha256 of each of this rank's parameters (``compat.weight_digests``)."""
        from vllm_poc import compat

        return compat.weight_digests(self.model_runner.get_model())  # type: ignore[attr-defined]

    def poc_max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The batch size of a round that leaves it to the server (``auto_batch``)."""
        return self._poc_forward().max_batch_size(seq_len, max_tokens)

    def poc_profile(
        self, batch: int, seq_len: int, reps: int = 5, random_projection: bool = False
    ) -> dict[str, float]:
        """Median ms per PoC stage and of a bare forward (``profiling``); for benchmarks."""
        from vllm_poc.worker.profiling import peak_matmul_tflops, profile_stages

        forward = self._poc_forward()
        timings = profile_stages(forward, batch, seq_len, reps, random_projection)
        size = 8192 if forward.device.type == "cuda" else 1024
        timings["peak_tflops"] = peak_matmul_tflops(forward.device, forward.dtype, size)
        return timings

    def _poc_artifacts(self) -> ArtifactForward:
        state = self.__dict__.get("_poc_artifact_state")
        if state is None:
            state = ArtifactForward(self._poc_forward())
            self.__dict__["_poc_artifact_state"] = state
        return state

    def _poc_forward(self) -> PoCForward:
        forward = self.__dict__.get("_poc_forward_state")
        if forward is None:
            forward = PoCForward(self.model_runner)  # type: ignore[attr-defined]
            self.__dict__["_poc_forward_state"] = forward
        return forward


def extension_qualname(existing: str | None) -> str:
    """The ``worker_extension_cls`` to configure, keeping an extension the operator set."""
    ours = f"{__name__}.{PoCWorkerExtension.__name__}"
    if not existing or existing == ours or existing.startswith(f"{__name__}.{_COMBINED_PREFIX}"):
        return existing or ours
    return f"{__name__}.{_COMBINED_PREFIX}{existing.encode().hex()}"


@cache
def _combined(encoded: str) -> type:
    qualname = bytes.fromhex(encoded).decode()
    module_name, _, class_name = qualname.rpartition(".")
    theirs = getattr(importlib.import_module(module_name), class_name)
    name = f"{_COMBINED_PREFIX}{encoded}"
    # Named like the module attribute that resolves it, so the class pickles by reference.
    return type(name, (PoCWorkerExtension, theirs), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str) -> Any:
    """Resolve the combined extension classes named by ``extension_qualname``."""
    if name.startswith(_COMBINED_PREFIX):
        try:
            return _combined(name[len(_COMBINED_PREFIX) :])
        except (ValueError, ImportError, AttributeError) as e:
            raise AttributeError(f"{__name__}.{name} names no extension class: {e}") from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
