"""vllm-poc: a vLLM plugin that turns a vLLM server into a Proof-of-Compute node."""

from vllm_poc.config import PoCConfig, PoCState
from vllm_poc.data import PROBABILITY_MISMATCH, ProofBatch, ValidatedBatch

__version__ = "0.1.0"

__all__ = ["PROBABILITY_MISMATCH", "PoCConfig", "PoCState", "ProofBatch", "ValidatedBatch"]
