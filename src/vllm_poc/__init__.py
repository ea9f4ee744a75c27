"""vllm-poc: a vLLM plugin that turns a vLLM server into a Proof-of-Compute node."""

__version__ = "0.1.0"

from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.protocol.state import PoCState
from vllm_poc.protocol.validation import PROBABILITY_MISMATCH

__all__ = ["PROBABILITY_MISMATCH", "PoCConfig", "PoCState", "ProofBatch", "ValidatedBatch"]
