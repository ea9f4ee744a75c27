"""The artifact protocol's math against its published test vectors (``data/artifact_vectors.json``,
also in docs/protocol.md): seeds, hash, uniforms, normals, inputs, layer vectors, the reflection
in the model dtype, coordinate order, rotation vectors, artifacts, decoding and the binomial test.

Exact where the protocol is exact (integers, orders, dtype-rounded reflections, artifacts);
within 1e-6 where it depends on the platform's float32 log/cos/sin (Gaussian arrays)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vllm_poc.protocol import inputs, randomness
from vllm_poc.protocol.artifact import math as artifact

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "artifact_vectors.json").read_text()
)
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def _sha(t: torch.Tensor) -> str:
    data = t.contiguous().view(-1).cpu()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def _split(key: str) -> list[str]:
    return key.split("|")


@pytest.mark.parametrize("key", [k for k in VECTORS["seeds"] if "layer" not in k])
def test_nonce_seeds(key: str) -> None:
    bh, pk, nonce = _split(key)
    v = VECTORS["seeds"][key]
    n = int(nonce)
    assert randomness.inputs_string(bh, pk, n) == v["input_seed_string"]
    assert randomness.inputs_seed(bh, pk, n) == v["input_seed"]
    assert randomness.inputs_seeds_strong(bh, pk, n) == v["stronger_sub_seeds"]
    assert artifact.pick_seed_string(bh, pk, n) == v["pick_seed_string"]
    assert randomness.seed_from_string(v["pick_seed_string"]) == v["pick_seed"]
    haar = [
        randomness.seed_from_string(artifact.rotation_seed_string(bh, pk, n, 12, j))
        for j in range(11)
    ]
    assert haar == v["haar_seeds"]


@pytest.mark.parametrize("key", [k for k in VECTORS["seeds"] if "layer" in k])
def test_layer_seeds(key: str) -> None:
    bh, layer = _split(key)
    v = VECTORS["seeds"][key]
    assert artifact.layer_seed_string(bh, int(layer.removeprefix("layer"))) == v["seed_string"]
    assert randomness.seed_from_string(v["seed_string"]) == v["seed"]


@pytest.mark.parametrize("seed", [k for k in VECTORS["murmur"] if not k.startswith("normal")])
def test_hash_and_uniforms(seed: str) -> None:
    v = VECTORS["murmur"][seed]
    n = len(v["hash"])
    assert randomness.murmur_hash(torch.arange(n), int(seed)).tolist() == v["hash"]
    uniforms = randomness.uniforms(int(seed), len(v["uniform_f32"]))
    assert uniforms.tolist() == v["uniform_f32"]


@pytest.mark.parametrize("key", [k for k in VECTORS["murmur"] if k.startswith("normal")])
def test_normals(key: str) -> None:
    _, seed, n = key.split("_")
    got = randomness.normals(int(seed.removeprefix("seed")), int(n.removeprefix("n")))
    assert np.allclose(got.numpy(), VECTORS["murmur"][key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", list(VECTORS["inputs"]))
def test_inputs(key: str) -> None:
    """Small cases element by element; realistic sizes by their bf16 rounding (the stream is
    libm-sensitive in float32, 1 bf16 ulp in a few elements per million at most)."""
    v = VECTORS["inputs"][key]
    derivation = "strong" if v["stronger_rng"] else "v1"
    for i, nonce in enumerate(v["nonces"]):
        x = inputs.generate_inputs(
            v["bh"], v["pk"], [nonce], v["dim"], v["seq_len"], "cpu", torch.float32, derivation
        ).view(-1)
        want = v[f"nonce{i}"]
        assert np.allclose(x[:8].numpy(), want["first8_f32"], rtol=0, atol=1e-6)
        assert np.allclose(x[-4:].numpy(), want["last4_f32"], rtol=0, atol=1e-6)
        if "all_f32" in want:
            assert np.allclose(x.numpy(), want["all_f32"], rtol=0, atol=1e-6)
        bits = [f"0x{b & 0xFFFF:04x}" for b in x[:8].to(torch.bfloat16).view(torch.int16).tolist()]
        assert bits == want["first8_bf16_bits"]
        assert math.isclose(float(x.double().sum()), want["sum_f64"], rel_tol=0, abs_tol=1e-3)


@pytest.mark.parametrize("key", list(VECTORS["layer_vectors"]))
def test_layer_vectors(key: str) -> None:
    bh, dim, layer = _split(key)
    v = VECTORS["layer_vectors"][key]
    w = artifact.layer_vectors(bh, [int(layer.removeprefix("layer"))], int(dim.removeprefix("dim")))
    assert np.allclose(w[0, :8].numpy(), v["first8_f32"], rtol=0, atol=2e-8)
    assert abs(float(w[0].double().norm()) - 1.0) < 1e-6


def _grid(a: int, b_mul: int, scale: float, dim: int, dtype: torch.dtype) -> torch.Tensor:
    i = torch.arange(dim, dtype=torch.float64)
    rows = [(((a * i + b_mul * b) % 201) - 100) / scale for b in range(5)]
    return torch.stack(rows).to(torch.float32).to(dtype)


@pytest.mark.parametrize("key", [k for k in VECTORS["hooks"] if k.endswith("v023")])
def test_reflection_in_the_model_dtype(key: str) -> None:
    """bf16 and f16: bit-exact (the protocol's operation order); f32: within 2.4e-7."""
    v = VECTORS["hooks"][key]
    dtype = DTYPES[v["dtype"]]
    w = artifact.layer_vectors(v["block_hash"], [v["layer"]], v["dim"])[0]
    x = _grid(37, 101, 50.0, v["dim"], dtype)
    r = _grid(53, 7, 16.0, v["dim"], dtype)
    assert _sha(x) == v["sha256_X"] and _sha(r) == v["sha256_R"]
    hx, hr = artifact.reflect(x, w), artifact.reflect(r, w)
    if dtype == torch.float32:
        assert np.allclose(hx[0, :8].numpy(), v["hidden_out_first8_f32"], rtol=0, atol=2.4e-7)
        assert np.allclose(hr[0, :8].numpy(), v["residual_out_first8_f32"], rtol=0, atol=2.4e-6)
    else:
        assert _sha(hx) == v["sha256_hidden_out"]
        assert _sha(hr) == v["sha256_residual_out"]
        assert hx[0, :8].float().tolist() == v["hidden_out_first8_f32"]


@pytest.mark.parametrize("key", list(VECTORS["picks"]))
def test_coordinate_order_is_productions(key: str) -> None:
    """CUDA's order (the k-1 smaller hashes by index, then the largest), on any device."""
    bh, pk, dim, nonce = _split(key)
    v = VECTORS["picks"][key]
    order = artifact.coordinates(bh, pk, [int(nonce.removeprefix("nonce"))], int(dim[3:]))
    assert order[0].tolist() == v["cuda_order"]


@pytest.mark.parametrize("key", list(VECTORS["haar_vectors"]))
def test_rotation_vectors(key: str) -> None:
    bh, pk, nonce = _split(key)
    got = artifact.rotation_vectors(bh, pk, [int(nonce.removeprefix("nonce"))])[0]
    want = np.array(VECTORS["haar_vectors"][key]["vectors_f32"], dtype=np.float32)
    assert got.shape == (11, 12)
    assert np.allclose(got.numpy(), want, rtol=0, atol=2e-7)


def _hidden(rows: int, dim: int) -> torch.Tensor:
    i = torch.arange(dim, dtype=torch.float64)
    return torch.stack(
        [torch.sin(1 + 0.01 * i + 0.7 * b) * (1 + (i % 7) / 10) for b in range(rows)]
    ).to(torch.float32)


@pytest.mark.parametrize("key", [k for k in VECTORS["artifacts"] if k.endswith("cuda")])
def test_artifacts_of_a_fixed_hidden_state(key: str) -> None:
    """The whole chain, batched: every listed artifact bit-identical, base64 included."""
    v = VECTORS["artifacts"][key]
    hidden = _hidden(len(v["nonces"]), v["dim"])
    assert hashlib.sha256(hidden.numpy().tobytes()).hexdigest() == v["sha256_hidden_f32"]
    rows = artifact.artifacts(hidden, v["bh"], v["pk"], v["nonces"])
    for i, row in enumerate(rows):
        want = v[f"nonce{i}"]
        bits = [f"0x{b & 0xFFFF:04x}" for b in row.view(torch.int16).tolist()]
        assert bits == want["artifact_f16_bits"], (i, row.tolist(), want["artifact_f16"])
        assert artifact.encode(row) == want["vector_b64"]


def test_decoding_and_the_mismatch_rule() -> None:
    v = VECTORS["validation"]
    decoded = artifact.decode(v["decode_roundtrip"]["b64"])
    assert decoded is not None and decoded.tolist() == v["decode_roundtrip"]["decoded"]
    cuda = VECTORS["artifacts"]["TEST_BLOCK|test_pub_keys|dim4096|cuda"]
    one = np.array(cuda["nonce1"]["artifact_f16"], dtype=np.float32)
    diff = one - decoded
    assert math.isclose(
        float(np.sqrt(np.sum(diff * diff))), v["distance_nonce0_vs_nonce1"], rel_tol=1e-6
    )
    assert artifact.is_mismatch(one, cuda["nonce0"]["vector_b64"], 0.2) is v["is_mismatch(th=0.2)"]
    assert not artifact.is_mismatch(decoded, cuda["nonce0"]["vector_b64"], 0.0)
    nan = artifact.encode(torch.tensor([float("nan")] + [0.0] * 11))
    assert artifact.is_mismatch(decoded, nan, 0.2) is v["is_mismatch_nan_received"]


@pytest.mark.parametrize(
    "received",
    ["", "not base64!", "j66CtmwySzWOsC44iTImMNus4DEM", "j66CtmwySzWOsC44iTImMNus4DEMuEexAAAA"],
)
def test_malformed_artifacts_are_mismatches_never_errors(received: str) -> None:
    assert artifact.is_mismatch(np.zeros(12, dtype=np.float32), received, 10.0)


@pytest.mark.parametrize("row", VECTORS["validation"]["binomial_table"])
def test_binomial_test(row: dict[str, Any]) -> None:
    got = artifact.binomial_test(
        row["n_mismatch"], row["n_total"], row["p_mismatch"], row["fraud_threshold"]
    )
    assert math.isclose(got.p_value, row["p_value"], rel_tol=1e-9, abs_tol=1e-300)
    assert got.fraud_detected is row["fraud"]


def test_no_nonces_is_no_fraud() -> None:
    assert artifact.binomial_test(0, 0) == artifact.BinomialTest(0, 0, 1.0, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (its topk order)")
def test_cuda_topk_writes_the_protocols_order() -> None:
    """§5.3's rule is derived from PyTorch's CUDA source: production nodes take the order from
    ``topk(sorted=False)`` on CUDA, this package computes it. Both must agree on a GPU."""
    for key, v in VECTORS["picks"].items():
        bh, pk, dim, nonce = _split(key)
        n, d = int(nonce.removeprefix("nonce")), int(dim[3:])
        seed = randomness.seed_from_string(artifact.pick_seed_string(bh, pk, n))
        hashes = randomness.murmur_hash(torch.arange(d, device="cuda"), seed).repeat(32, 1)
        cuda = torch.topk(-hashes, 12, dim=1, sorted=False).indices[0]
        assert cuda.tolist() == v["cuda_order"], key
        assert artifact.coordinates(bh, pk, [n], d, device="cuda")[0].tolist() == v["cuda_order"]
