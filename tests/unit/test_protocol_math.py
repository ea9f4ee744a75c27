"""The protocol math against the test vectors of docs/protocol.md, and its properties."""

import hashlib

import pytest
import torch

from vllm_poc.protocol import inputs, randomness
from vllm_poc.protocol.distance import math as distance

HAS_CUDA = torch.cuda.is_available()
TOL = dict(rtol=0, atol=1e-6)


class TestVectors:
    def test_seed_of_string(self):
        assert randomness.seed_from_string("abc_target") == 2257755138
        assert randomness.target_seed("abc") == 2257755138

    def test_hash(self):
        h = randomness.murmur_hash(torch.arange(4), 42)
        assert h.tolist() == [3139624308, 2416545486, 4226773262, 3387253356]

    def test_uniforms(self):
        expected = torch.tensor([0.7310007, 0.5626459, 0.9841223, 0.7886564])
        torch.testing.assert_close(randomness.uniforms(42, 4), expected, **TOL)

    def test_normals(self):
        expected = torch.tensor([0.1903907, -0.0172907, -0.0157775, -0.7683964, -1.0723389])
        torch.testing.assert_close(randomness.normals(42, 5), expected, **TOL)

    def test_inputs(self):
        x = inputs.generate_inputs("abc", "node1", [0], dim=3, seq_len=2)
        expected = torch.tensor(
            [[-1.4886131, -2.2534342, -0.5419264], [1.6539030, -0.5654650, -0.8621905]]
        )
        assert x.shape == (1, 2, 3)
        torch.testing.assert_close(x[0], expected, **TOL)

    def test_permutation(self):
        perm = distance.generate_permutations("abc", "node1", [0], vocab_size=10)
        assert perm.tolist() == [[4, 7, 1, 9, 8, 2, 6, 0, 5, 3]]
        assert perm.dtype == torch.int64

    def test_target(self):
        expected = torch.tensor(
            [0.8371606, -0.0833870, 0.0708906, -0.0566120, 0.2381906, 0.4767007]
        )
        torch.testing.assert_close(distance.generate_target("abc", 6), expected, **TOL)

    def test_hash_of_large_indices_wraps_at_32_bits(self):
        # Index arithmetic must be modulo 2^32, like the 4-byte key it stands for.
        big = torch.tensor([2**32 - 1, 2**31 + 7])
        expected = [_reference_hash(int(i), 42) for i in big]
        assert randomness.murmur_hash(big, 42).tolist() == expected

    def test_hash_matches_scalar_reference(self):
        idx = torch.arange(0, 5000, 37)
        for seed in (0, 1, 2257755138, 2**32 - 1):
            assert randomness.murmur_hash(idx, seed).tolist() == [
                _reference_hash(int(i), seed) for i in idx
            ]

    def test_hash_matches_scalar_reference_over_the_whole_range(self):
        # Random 32-bit indices and seeds: every sign-bit case of the int32 arithmetic.
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(0, 2**32, (4000,), generator=gen)
        seeds = torch.randint(0, 2**32, (4,), generator=gen).tolist()
        for seed in (*seeds, 2**31, 2**31 - 1):
            assert randomness.murmur_hash(idx, seed).tolist() == [
                _reference_hash(int(i), seed) for i in idx
            ]

    def test_uniforms_round_the_exact_hash_once(self):
        seed = 2**32 - 5
        h = randomness.murmur_hash(torch.arange(100_000), seed)
        expected = h.to(torch.float64).to(torch.float32) / 2**32  # both casts exact or RNE
        assert torch.equal(randomness.uniforms(seed, 100_000), expected)

    def test_pinned_digests(self):
        # Bytes of results at real sizes, pinned from the first (int64) implementation: any
        # change of a single number in the protocol's integers fails here.
        nonces = [0, 1, 7, 123456789, 2**40 + 3, 2**31 + 5]
        perms = distance.generate_permutations("blk", "pk", nonces, vocab_size=151936)
        hashes = randomness.murmur_hash(torch.arange(0, 2**32, 4093), 2**32 - 5)
        assert _digest(perms) == "aa7a91e9ba45e4cd"
        assert _digest(hashes) == "099f4e19ec8e13c9"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def _reference_hash(i: int, seed: int) -> int:
    """The spec's pseudo-code, literally, on Python ints."""
    m = 0xFFFFFFFF
    k = (i * 0xCC9E2D51) & m
    k = _rotl(k, 15)
    k = (k * 0x1B873593) & m
    h = seed ^ k
    h = _rotl(h, 13)
    h = (h * 5 + 0xE6546B64) & m
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    h ^= h >> 16
    return h


class TestBatching:
    NONCES = (0, 1, 7, 123456789, 2**40 + 3)

    def test_batched_inputs_equal_one_at_a_time(self):
        batch = inputs.generate_inputs(
            "blk", "pk", self.NONCES, dim=16, seq_len=8, dtype=torch.bfloat16
        )
        for row, nonce in zip(batch, self.NONCES, strict=True):
            one = inputs.generate_inputs(
                "blk", "pk", [nonce], dim=16, seq_len=8, dtype=torch.bfloat16
            )
            assert torch.equal(row, one[0])

    def test_batched_permutations_equal_one_at_a_time(self):
        batch = distance.generate_permutations("blk", "pk", self.NONCES, vocab_size=1000)
        for row, nonce in zip(batch, self.NONCES, strict=True):
            assert torch.equal(row, distance.generate_permutations("blk", "pk", [nonce], 1000)[0])

    def test_inputs_are_normals_of_the_nonce_seed(self):
        x = inputs.generate_inputs("blk", "pk", [5], dim=4, seq_len=3)
        seed = randomness.seed_from_string("blk_pk_nonce5")
        assert torch.equal(x[0].flatten(), randomness.normals(seed, 12))

    def test_chunking_does_not_change_results(self, monkeypatch):
        whole = inputs.generate_inputs("blk", "pk", self.NONCES, dim=8, seq_len=4)
        perms = distance.generate_permutations("blk", "pk", self.NONCES, vocab_size=64)
        monkeypatch.setattr(inputs, "MAX_CHUNK_ELEMENTS", 40)
        assert torch.equal(
            inputs.generate_inputs("blk", "pk", self.NONCES, dim=8, seq_len=4), whole
        )
        assert torch.equal(
            distance.generate_permutations("blk", "pk", self.NONCES, vocab_size=64), perms
        )

    def test_odd_sizes(self):
        # n odd: Box-Muller pads to an even count and truncates
        x = inputs.generate_inputs("blk", "pk", [1, 2], dim=3, seq_len=3)
        assert x.shape == (2, 3, 3)
        assert torch.isfinite(x).all()


class TestProperties:
    def test_same_seed_same_inputs(self):
        a = inputs.generate_inputs("b", "k", [3, 4], dim=8, seq_len=4)
        b = inputs.generate_inputs("b", "k", [3, 4], dim=8, seq_len=4)
        assert torch.equal(a, b)

    def test_different_nonce_different_inputs(self):
        x = inputs.generate_inputs("b", "k", [3, 4], dim=8, seq_len=4)
        assert not torch.equal(x[0], x[1])

    def test_different_block_hash_different_inputs(self):
        a = inputs.generate_inputs("b1", "k", [3], dim=8, seq_len=4)
        b = inputs.generate_inputs("b2", "k", [3], dim=8, seq_len=4)
        assert not torch.equal(a, b)

    def test_different_public_key_different_inputs(self):
        a = inputs.generate_inputs("b", "k1", [3], dim=8, seq_len=4)
        b = inputs.generate_inputs("b", "k2", [3], dim=8, seq_len=4)
        assert not torch.equal(a, b)

    def test_inputs_dtype_and_statistics(self):
        x = inputs.generate_inputs("b", "k", [0, 1], dim=256, seq_len=64, dtype=torch.bfloat16)
        assert x.dtype == torch.bfloat16
        flat = x.float().flatten()
        assert abs(flat.mean().item()) < 0.02
        assert abs(flat.std().item() - 1.0) < 0.02

    def test_same_seed_same_permutation(self):
        a = distance.generate_permutations("b", "k", [9], 500)
        assert torch.equal(a, distance.generate_permutations("b", "k", [9], 500))

    def test_permutation_is_a_permutation(self):
        perms = distance.generate_permutations("b", "k", [0, 1, 2], 4099)
        expected = torch.arange(4099)
        for row in perms:
            assert torch.equal(torch.sort(row).values, expected)

    def test_different_nonce_different_permutation(self):
        perms = distance.generate_permutations("b", "k", [0, 1], 500)
        assert not torch.equal(perms[0], perms[1])

    def test_different_block_or_key_different_permutation(self):
        base = distance.generate_permutations("b", "k", [0], 500)
        assert not torch.equal(base, distance.generate_permutations("b2", "k", [0], 500))
        assert not torch.equal(base, distance.generate_permutations("b", "k2", [0], 500))

    def test_same_seed_same_target(self):
        assert torch.equal(distance.generate_target("b", 1000), distance.generate_target("b", 1000))

    def test_different_block_different_target(self):
        assert not torch.equal(
            distance.generate_target("b1", 1000), distance.generate_target("b2", 1000)
        )

    def test_target_has_unit_norm(self):
        t = distance.generate_target("b", 151936)
        assert t.dtype == torch.float32
        assert abs(torch.linalg.vector_norm(t).item() - 1.0) < 1e-5

    def test_distances_in_range(self):
        logits = torch.randn(64, 300) * 5
        perms = distance.generate_permutations("b", "k", list(range(64)), 300)
        d = distance.compute_distances(logits, perms, distance.generate_target("b", 300))
        assert d.shape == (64,)
        assert d.dtype == torch.float32
        assert ((d >= 0) & (d <= 2)).all()

    def test_distance_extremes(self):
        target = distance.generate_target("b", 50)
        perm = distance.generate_permutations("b", "k", [0], 50)
        # logits whose permutation lines up with the target (up to scale) give distance 0,
        # their negation gives 2
        aligned = torch.empty(50)
        aligned[perm[0]] = target * 3.0
        d = distance.compute_distances(torch.stack([aligned, -aligned]), perm.expand(2, -1), target)
        torch.testing.assert_close(d, torch.tensor([0.0, 2.0]), rtol=0, atol=1e-3)

    def test_distance_matches_definition(self):
        logits = torch.randn(3, 40, dtype=torch.bfloat16)
        perms = distance.generate_permutations("b", "k", [0, 1, 2], 40)
        target = distance.generate_target("b", 40)
        d = distance.compute_distances(logits, perms, target)
        for i in range(3):
            x = logits[i].float()[perms[i]]
            x = x / x.norm()
            torch.testing.assert_close(d[i], (x - target).norm())


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA (CPU-vs-CUDA equality)")
class TestCudaEqualsCpu:
    def test_all_four_functions(self):
        nonces = [0, 1, 99, 2**33]
        cpu_in = inputs.generate_inputs("b", "k", nonces, dim=64, seq_len=16)
        gpu_in = inputs.generate_inputs("b", "k", nonces, dim=64, seq_len=16, device="cuda")
        torch.testing.assert_close(gpu_in.cpu(), cpu_in, rtol=0, atol=1e-5)
        assert torch.equal(
            distance.generate_permutations("b", "k", nonces, 151936, device="cuda").cpu(),
            distance.generate_permutations("b", "k", nonces, 151936),
        )
        t_cpu = distance.generate_target("b", 151936)
        t_gpu = distance.generate_target("b", 151936, device="cuda").cpu()
        torch.testing.assert_close(t_gpu, t_cpu, rtol=0, atol=1e-6)
        logits = torch.randn(4, 151936)
        perms = distance.generate_permutations("b", "k", nonces, 151936)
        d_cpu = distance.compute_distances(logits, perms, t_cpu)
        d_gpu = distance.compute_distances(logits.cuda(), perms.cuda(), t_cpu.cuda()).cpu()
        torch.testing.assert_close(d_gpu, d_cpu, rtol=0, atol=1e-5)


class TestRandomProjection:
    """Random projections; vectors also in docs/protocol.md (§3, §7)."""

    def test_seeds(self):
        assert randomness.projection_seed("abc", "pre") == 2853540889
        assert randomness.projection_seed("abc", "post") == 3866761470
        with pytest.raises(ValueError, match="pre"):
            randomness.projection_seed("abc", "middle")

    def test_vectors(self):
        pre = torch.tensor([[8.0205643e-07, 4.9408469e-03], [2.3972269e-03, -3.1940250e-03]])
        post = torch.tensor([[0.0050434, 0.0032171], [0.0193570, -0.0040832]])
        torch.testing.assert_close(distance.generate_projection("abc", "pre", 2), pre, **TOL)
        torch.testing.assert_close(distance.generate_projection("abc", "post", 2), post, **TOL)

    def test_projection_is_scaled_normals_of_its_seed(self):
        p = distance.generate_projection("blk", "pre", 8)
        expected = (
            randomness.normals(randomness.seed_from_string("blk_proj_pre"), 64).view(8, 8) * 0.01
        )
        assert torch.equal(p, expected)
        assert p.dtype == torch.float32

    def test_apply_vector(self):
        x = inputs.generate_inputs("abc", "node1", [0], 3, 2)[0]
        y = distance.apply_projection(x, distance.generate_projection("abc", "pre", 3))
        expected = torch.tensor(
            [[-1.4886684, -2.2767806, -0.5524540], [1.6509581, -0.5770236, -0.8638464]]
        )
        torch.testing.assert_close(y, expected, **TOL)

    def test_apply_is_residual_in_float32_and_keeps_dtype(self):
        x = torch.randn(5, 16, dtype=torch.bfloat16)
        p = distance.generate_projection("blk", "post", 16)
        y = distance.apply_projection(x, p)
        assert y.dtype == torch.bfloat16
        expected = (x.float() + x.float() @ p).to(torch.bfloat16)
        assert torch.equal(y, expected)
        assert not torch.equal(y, x)

    def test_pre_post_and_blocks_differ(self):
        a = distance.generate_projection("b1", "pre", 16)
        assert not torch.equal(a, distance.generate_projection("b1", "post", 16))
        assert not torch.equal(a, distance.generate_projection("b2", "pre", 16))
        assert torch.equal(a, distance.generate_projection("b1", "pre", 16))


BH2 = "9234F66FD723CBB537E6B1E21DCA303B562D31704E9D9C309F0C452A2B99A8DB"
PK2 = "02deac65dda7f42a12feb1a7d410628b5085dd27475bcef509ea6642b504984ec6"
ARTIFACT_PROTOCOL_INPUTS = [
    # (block, key, nonce, seq_len, hidden, derivation, first 8 and last 4 values, the first 8
    # as bf16 bit patterns, the sum in float64)
    (BH2, PK2, 0, 1024, 4096, "strong",
     [-0.007004926, 1.314487, -0.2731517, -0.7329808, 1.026978, -0.2645613, 0.5639471, -0.7474569],
     [-0.5872716, 1.01132, -1.979527, 0.1765151],
     [0xBBE6, 0x3FA8, 0xBE8C, 0xBF3C, 0x3F83, 0xBE87, 0x3F10, 0xBF3F], -1100.434384),
    (BH2, PK2, 1, 1024, 4096, "strong",
     [-0.6713303, 1.392353, 0.07083391, -0.8514264, 0.2676974, 0.5554739, 1.331142, -0.4962322],
     [-1.277987, -0.5760309, 0.983199, -0.5641387],
     [0xBF2C, 0x3FB2, 0x3D91, 0xBF5A, 0x3E89, 0x3F0E, 0x3FAA, 0xBEFE], -1155.695883),
    (BH2, PK2, 0, 1024, 4096, "v1",
     [0.03961853, 1.171407, 0.1667522, 1.449374, -1.462835, -0.8001102, -0.7756259, -0.6049056],
     [0.9114955, -1.538301, -1.929612, 1.552228],
     [0x3D22, 0x3F96, 0x3E2B, 0x3FBA, 0xBFBB, 0xBF4D, 0xBF47, 0xBF1B], 109.115606),
]  # fmt: skip
"""Input streams of the artifact protocol's published vectors at realistic sizes (its "legacy"
stream is ``v1``, its "stronger RNG" stream ``strong``)."""
SMALL_STRONG = [
    -0.35777417, 1.2526853, -0.14366598, 2.584507, 0.98769617, 0.50840008, 0.21715057, 1.1254716,
    0.44572398, -0.24086939, -0.68018639, 0.32628232, -0.093056254, -0.040718075, -0.61655456,
]  # fmt: skip
"""TEST_BLOCK / test_pub_keys, nonce 0, seq_len 3, dim 5, stronger RNG: every value."""
LIBM_TOL = 1e-6
"""The published Gaussians are f32 values of the platform's ``log``/``cos``/``sin``, which are not
correctly rounded: stacks differ by 1-3 ulp in a fifth of the elements (protocol.md §3.4), so
they are compared within this absolute tolerance, as the protocol's vectors say to."""


class TestStrongSeeds:
    def test_eight_seeds_are_the_whole_digest(self):
        seeds = randomness.seeds_x8_from_string("TEST_BLOCK_test_pub_keys_nonce0")
        assert seeds == [
            1589641989, 1811054632, 2092028337, 1372497962,
            2845890790, 282738888, 1675009164, 1960591446,
        ]  # fmt: skip
        assert seeds[0] == randomness.inputs_seed("TEST_BLOCK", "test_pub_keys", 0)

    @pytest.mark.parametrize(
        (
            "block",
            "key",
            "nonce",
            "seq_len",
            "hidden",
            "derivation",
            "first",
            "last",
            "bf16",
            "total",
        ),
        ARTIFACT_PROTOCOL_INPUTS,
        ids=[f"{c[3]}x{c[4]}-{c[5]}-nonce{c[2]}" for c in ARTIFACT_PROTOCOL_INPUTS],
    )
    def test_equal_to_the_artifact_protocols_vectors_up_to_libm(
        self, block, key, nonce, seq_len, hidden, derivation, first, last, bf16, total
    ):
        x = inputs.generate_inputs(
            block, key, [nonce], hidden, seq_len, seed_derivation=derivation
        )[0].view(-1)
        torch.testing.assert_close(x[:8], torch.tensor(first), atol=LIBM_TOL, rtol=0)
        torch.testing.assert_close(x[-4:], torch.tensor(last), atol=LIBM_TOL, rtol=0)
        patterns = x[:8].to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
        assert patterns.tolist() == bf16
        # 4M values, each within a few ulp: the float64 sum moves by far less than 0.01
        assert abs(x.double().sum().item() - total) < 0.01

    def test_every_value_of_the_small_stronger_vector(self):
        x = inputs.generate_inputs(
            "TEST_BLOCK", "test_pub_keys", [0], 5, 3, seed_derivation="strong"
        )
        torch.testing.assert_close(x.view(-1), torch.tensor(SMALL_STRONG), atol=LIBM_TOL, rtol=0)

    def test_segments_restart_their_streams(self):
        """Segment j of a row is N(seed_j, its length) on its own: the last one is shorter."""
        n = 3 * 5  # segments of ceil(15/8) = 2, the last of 1
        row = inputs.generate_inputs("b", "k", [7], 5, 3, seed_derivation="strong")[0].view(-1)
        seeds = randomness.inputs_seeds_strong("b", "k", 7)
        expected = torch.cat([randomness.normals(seeds[j], min(2, n - 2 * j)) for j in range(8)])
        assert torch.equal(row, expected)

    def test_batched_rows_equal_single_rows_in_any_dtype(self):
        nonces = [0, 5, 2**40]
        for dtype in (torch.float32, torch.bfloat16):
            batch = inputs.generate_inputs(
                "b", "k", nonces, 24, 5, dtype=dtype, seed_derivation="strong"
            )
            for i, nonce in enumerate(nonces):
                one = inputs.generate_inputs(
                    "b", "k", [nonce], 24, 5, dtype=dtype, seed_derivation="strong"
                )
                assert torch.equal(batch[i], one[0])

    def test_differs_from_v1(self):
        v1 = inputs.generate_inputs("b", "k", [3], 16, 4)[0].view(-1)
        strong = inputs.generate_inputs("b", "k", [3], 16, 4, seed_derivation="strong")[0]
        assert not torch.equal(v1, strong.view(-1))

    def test_unknown_derivation_is_refused(self):
        with pytest.raises(ValueError, match="seed_derivation"):
            inputs.generate_inputs("b", "k", [0], 4, 2, seed_derivation="v2")

    @pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA (CPU-vs-CUDA equality)")
    def test_cuda_equals_cpu(self):
        cpu = inputs.generate_inputs(BH2, PK2, [0, 1], 4096, 64, seed_derivation="strong")
        gpu = inputs.generate_inputs(
            BH2, PK2, [0, 1], 4096, 64, device="cuda", seed_derivation="strong"
        )
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
