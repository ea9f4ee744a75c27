"""Artifact-protocol batches in one worker: the PoC forward with the round's reflection after
every decoder layer, then the artifact math of ``protocol.artifact`` on the device.

The reflections are module hooks, so this forward runs the modules' plain forward (eager):
vLLM's graph and the PoC forward's own compiled graph would skip or bake in the hooks.
"""

from __future__ import annotations

import torch

from vllm_poc import compat
from vllm_poc.protocol import artifact
from vllm_poc.worker.forward import PoCForward
from vllm_poc.worker.reflections import reflected


class NoDecoderLayers(RuntimeError):
    """The model's decoder layers were not found: an artifact would lack its reflections."""


class ArtifactForward:
    """Computes artifacts with the model of one worker (through its ``PoCForward``)."""

    def __init__(self, forward: PoCForward) -> None:
        self.forward = forward
        config = forward.vllm_config.model_config.hf_text_config
        self.layers = compat.decoder_layers(forward.runner.get_model(), config.num_hidden_layers)
        self._vectors: tuple[str, torch.Tensor] | None = None

    def vectors(self, block_hash: str) -> torch.Tensor:
        """This rank's layers' reflection vectors, cached for the round's block hash."""
        if self._vectors is None or self._vectors[0] != block_hash:
            indices = [i for i, _ in self.layers]
            w = artifact.layer_vectors(
                block_hash, indices, self.forward.hidden_size, self.forward.device
            )
            self._vectors = (block_hash, w)
        return self._vectors[1]

    @torch.inference_mode()
    def artifacts(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        stronger_rng: bool = False,
        k: int = artifact.K_DIM,
    ) -> list[str] | None:
        """base64 artifacts of ``nonces`` in order; ``[]`` when the batch holds a non-finite
        value (rejected whole); None on ranks without the final hidden states."""
        if not self.layers:
            raise NoDecoderLayers(
                "vllm-poc: no decoder-layer list of the model was found; artifacts need a "
                "reflection after every decoder layer"
            )
        fwd = self.forward
        derivation = "strong" if stronger_rng else "v1"
        inputs = fwd.inputs(block_hash, public_key, nonces, seq_len, False, derivation)
        with reflected(self.layers, self.vectors(block_hash)):
            last = fwd.run(fwd.prepare(len(nonces), seq_len), inputs, eager=True)
        if last is None:
            return None
        rows = artifact.artifacts(last, block_hash, public_key, nonces, k)
        if not bool(artifact.finite_rows(last).all() and artifact.finite_rows(rows).all()):
            return []
        return artifact.encode_all(rows)
