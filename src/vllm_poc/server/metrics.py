"""Prometheus series of the plugin, served by vLLM's own ``/metrics``.

Created once at import in the API server process, in prometheus_client's default registry,
which vLLM's ``/metrics`` exports (and which aggregates across API server processes when
``PROMETHEUS_MULTIPROC_DIR`` is set).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vllm_poc.protocol.state import PoCState

ENGINE = ["dp_rank"]
"""Generation series carry the data-parallel rank of the engine that ran the batch, so that an
idle or failing GPU shows as a flat series."""

NONCES_CHECKED = Counter(
    "vllm_poc_nonces_checked", "Nonces computed in rounds (distances, or artifacts).", ENGINE
)
NONCES_VALID = Counter(
    "vllm_poc_nonces_valid",
    "Checked nonces below r_target (artifacts: every one computed).",
    ENGINE,
)
NONCES_INVALID_NUMBER = Counter(
    "vllm_poc_nonces_nonfinite", "Checked nonces with a NaN or infinite result.", ENGINE
)
BATCHES = Counter("vllm_poc_batches", "Generation batches completed.", ENGINE)
VALIDATED_NONCES = Counter("vllm_poc_validated_nonces", "Nonces recomputed for validation.")
ARTIFACTS_DROPPED = Counter(
    "vllm_poc_artifacts_dropped",
    "Generated artifacts dropped from the full stream buffer (artifact protocol).",
)
CALLBACKS = Counter("vllm_poc_callbacks", "Callback posts by result.", ["result"])
BATCH_SECONDS = Histogram(
    "vllm_poc_batch_seconds",
    "Wall time of one generation batch (RPC round trip).",
    ENGINE,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STATE = Gauge("vllm_poc_state", "1 for the current PoC state, 0 for the others.", ["state"])


def set_state(state: PoCState) -> None:
    for s in PoCState:
        STATE.labels(state=s.value).set(1 if s is state else 0)


class GaugedState:
    """A ``PoCState`` attribute whose every assignment also sets the state gauge (both
    protocols' nodes hold one)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = f"_{name}"

    def __get__(self, obj: object, objtype: type | None = None) -> PoCState:
        return getattr(obj, self.attribute)

    def __set__(self, obj: object, value: PoCState) -> None:
        setattr(obj, self.attribute, value)
        set_state(value)


def record_batch(dp_rank: int, checked: int, valid: int, nonfinite: int, seconds: float) -> None:
    """One finished generation batch of the engine of ``dp_rank``."""
    rank = str(dp_rank)
    BATCHES.labels(rank).inc()
    BATCH_SECONDS.labels(rank).observe(seconds)
    NONCES_CHECKED.labels(rank).inc(checked)
    NONCES_VALID.labels(rank).inc(valid)
    NONCES_INVALID_NUMBER.labels(rank).inc(nonfinite)
