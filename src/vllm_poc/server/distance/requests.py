"""The distance protocol's requests that start work (``/init*``, ``/validate``,
``/calibrate``): parsed bodies turned into the round manager's calls, with the node's defaults and
limits applied first."""

from __future__ import annotations

from typing import Any

from vllm_poc import envs
from vllm_poc.protocol.distance.batches import ValidatedBatch
from vllm_poc.protocol.distance.round import CalibrationRequest, RoundRequest
from vllm_poc.protocol.distance.wire import ProofBatchRequest
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import limits
from vllm_poc.server.distance import proofs
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.errors import BadValue


async def open_round(
    manager: PoCManager, request: RoundRequest, phase: PoCState = PoCState.IDLE
) -> None:
    """``/init`` (IDLE), ``/init/generate`` (GENERATING), ``/init/validate`` (VALIDATING)."""
    manager.refuse_while_generating()
    manager.refuse_unsupported()
    if phase == PoCState.GENERATING and not request.has_node:
        raise BadValue("Node ID and node count must be set")
    seq_len = request.seq_len or envs.VLLM_POC_SEQ_LEN
    batch_size = request.batch_size or await manager.default_batch_size(seq_len)
    try:
        config = request.to_config(batch_size, seq_len)
    except ValueError as e:
        raise BadValue(str(e)) from e
    manager.init_round(config)
    if phase == PoCState.GENERATING:
        manager.start_generate()
    elif phase == PoCState.VALIDATING:
        manager.start_validate()


async def validate(manager: PoCManager, body: ProofBatchRequest) -> ValidatedBatch:
    """``/validate``: a submitted batch under the current round (409 when it states other
    parameters), judged with the request's statistical parameters where it sets them."""
    config = manager.round_to_validate()
    if config.block_hash != body.block_hash:
        raise BadValue("Block hash mismatch")
    limits.check_count(len(body.nonces), "nonces", "VLLM_POC_MAX_VALIDATE_NONCES")
    try:
        batch = body.to_batch()
    except ValueError as e:
        raise BadValue(str(e)) from e
    proofs.check_parameters(batch, config, manager.model_name)
    return await manager.validate_batch(batch, body.statistics())


async def calibrate(manager: PoCManager, body: CalibrationRequest) -> dict[str, Any]:
    """``/calibrate``: refused while generating, before any work."""
    limits.check_count(body.n_samples, "samples", "VLLM_POC_MAX_CALIBRATION_SAMPLES")
    manager.refuse_while_generating("Cannot calibrate while generating")
    manager.refuse_unsupported()
    seq_len = body.seq_len or envs.VLLM_POC_SEQ_LEN
    batch_size = body.batch_size or await manager.default_batch_size(seq_len)
    config = body.to_config(batch_size, seq_len)
    return await manager.calibrate(config, body.n_samples, body.valid_rate)
