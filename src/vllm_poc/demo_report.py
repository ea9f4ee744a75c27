"""What the demo (``python -m vllm_poc.demo``) found, and the summary it prints."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_poc.client import Progress, RoundParams, Verdict
from vllm_poc.protocol.distance.batches import ProofBatch


@dataclass
class DemoResult:
    params: RoundParams
    calibration_size: int
    final: Progress
    batch: ProofBatch
    honest_sampled: int
    honest: Verdict
    forged_size: int
    forged_fake: int
    forged_sampled: int
    forged: Verdict

    @property
    def as_expected(self) -> bool:
        return not self.honest.fraud_detected and self.forged.fraud_detected


def summary(result: DemoResult) -> str:
    f = result.final
    share = f.total_valid / f.total_checked if f.total_checked else 0.0
    rows = [
        ("block / height", f"{result.params.block_hash} / {result.params.block_height}"),
        (
            "round shape",
            f"batch {f.raw['config']['batch_size']} x seq_len {result.params.seq_len}, node 0 of 1",
        ),
        ("r_target", f"{result.params.r_target} (from {result.calibration_size} nonces)"),
        (
            "generated",
            f"{f.total_checked} checked, {f.total_valid} valid ({share:.0%}) in "
            f"{f.elapsed_seconds:.1f} s, {f.rate_per_second:.0f} nonces/s",
        ),
        (
            "honest batch",
            _verdict_cell(result.honest, result.honest_sampled, len(result.batch)),
        ),
        (
            f"forged (+{result.forged_fake} fake)",
            _verdict_cell(result.forged, result.forged_sampled, result.forged_size),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    rule = "  " + "-" * max(len(line) - 2 for line in lines)
    return "\n".join(["", "  PoC round summary", rule, *lines, rule])


def _verdict_cell(verdict: Verdict, sampled: int, size: int) -> str:
    return (
        f"{sampled} of {size} sampled, {verdict.n_invalid} invalid, "
        f"p(honest) {verdict.probability_honest:.2g} -> {verdict.label}"
    )
