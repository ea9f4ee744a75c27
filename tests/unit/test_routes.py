"""The ``/api/v1/pow`` routes on an in-process node (real routes, guards, manager; fake engine):
the design's route tests, bad input, inference blocking, auth and limits."""

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from tests.unit.fakes import fake_distance
from tests.unit.node import running_node, vllm_like_app
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import guards, protocols

INIT = {"block_hash": "hash1", "block_height": 100, "public_key": "node1", "r_target": 0.5}
NODE = {"node_id": 0, "node_count": 1}
BATCH = {
    "public_key": "node1",
    "block_hash": "hash1",
    "block_height": 100,
    "nonces": [0, 1, 2],
    "dist": [0.3, 0.4, 0.6],
    "node_id": 0,
}


@pytest.fixture
def node():
    with running_node() as n:
        yield n


def _rpcs(node, method):
    return [args for m, args in node.engine.calls if m == method]


def _configured(node, **overrides):
    """A round in VALIDATING with INIT's block (no generation running)."""
    response = node.post("/init/validate", json={**INIT, "batch_size": 8, **overrides})
    assert response.status_code == 200, response.text


class TestStatusEndpoint:
    def test_status_returns_data(self, node):
        response = node.get("/status")
        assert response.status_code == 200
        data = response.json()
        assert data["state"] == "IDLE"
        assert data["valid_nonces"] == []
        assert data["total_checked"] == 0
        assert data["callbacks"] == {"sent": 0, "failed_attempts": 0, "pending": 0, "dropped": 0}
        assert data["engines"] == [{"dp_rank": 0, "checked": 0, "valid": 0, "error": None}]
        assert "next" not in data  # the seed's response, unchanged without ?since

    def test_status_since_pages_the_valid_nonces(self, node):
        node.manager.generation.valid_nonces = list(range(10))
        node.manager.generation.valid_distances = [n / 10 for n in range(10)]
        full = node.get("/status").json()
        page = node.get("/status", params={"since": 7}).json()
        assert page["valid_nonces"] == [7, 8, 9] and page["valid_distances"] == [0.7, 0.8, 0.9]
        assert page["next"] == 10
        assert {k: v for k, v in page.items() if not k.startswith("valid_") and k != "next"} == {
            k: v for k, v in full.items() if not k.startswith("valid_")
        }
        end = node.get("/status", params={"since": 10}).json()
        assert end["valid_nonces"] == [] and end["next"] == 10
        first = node.get("/status", params={"since": 0}).json()
        assert first["valid_nonces"] == full["valid_nonces"] and first["next"] == 10

    @pytest.mark.parametrize("since", ["-1", "11", "abc", "1.5"])
    def test_status_since_out_of_range_is_400(self, node, since):
        node.manager.generation.valid_nonces = list(range(10))
        node.manager.generation.valid_distances = [0.5] * 10
        response = node.get("/status", params={"since": since})
        assert response.status_code == 400, response.text
        assert node.get("/status").json()["valid_nonces"] == list(range(10))


class TestInitEndpoint:
    def test_init_success(self, node):
        response = node.post("/init", json=INIT)
        assert response.status_code == 200
        assert response.json()["status"] == "OK"
        config = node.manager.config
        assert (config.node_id, config.node_count, config.batch_size) == (-1, -1, 64)
        assert node.manager.state == PoCState.IDLE
        assert response.json()["pow_status"]["config"]["batch_size"] == 64

    def test_defaults_come_from_settings_and_the_workers(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_SEQ_LEN", "64")
        node.engine.max_batch_sizes = [7]
        node.post("/init", json=INIT)
        assert (node.manager.config.batch_size, node.manager.config.seq_len) == (7, 64)
        assert _rpcs(node, "poc_max_batch_size") == [(64, 65536)]

    def test_a_given_batch_size_is_not_resized(self, node):
        node.post("/init", json={**INIT, "batch_size": 5})
        assert node.manager.config.batch_size == 5
        assert _rpcs(node, "poc_max_batch_size") == []

    def test_sizing_failure_in_the_engine_is_a_503(self, node):
        node.engine.error = TimeoutError("rpc timed out")
        response = node.post("/init", json=INIT)
        assert response.status_code == 503
        assert "poc_max_batch_size" in response.json()["detail"]
        assert "rpc timed out" in response.json()["detail"]
        assert node.manager.config is None

    def test_sizing_refusal_is_a_400_without_an_rpc(self, node):
        response = node.post("/init/generate", json={**INIT, **NODE, "seq_len": 999})
        assert response.status_code == 400
        assert "exceeds the model's max length" in response.json()["detail"]
        assert node.engine.calls == [] and node.manager.config is None

    def test_init_blocked_when_generating(self, node):
        assert node.post("/init/generate", json={**INIT, **NODE, "batch_size": 4}).is_success
        response = node.post("/init", json=INIT)
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]

    def test_server_limit_is_a_413(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BATCH_SIZE", "8")
        response = node.post("/init", json={**INIT, "batch_size": 9, "seq_len": 64})
        assert response.status_code == 413
        assert "VLLM_POC_MAX_BATCH_SIZE=8" in response.json()["detail"]
        assert node.manager.config is None


class TestInitGenerateEndpoint:
    def test_requires_node_id(self, node):
        response = node.post("/init/generate", json=INIT)
        assert response.status_code == 400
        assert "Node ID" in response.json()["detail"]
        assert node.manager.config is None and node.engine.calls == []

    def test_success_with_node_info(self, node):
        response = node.post("/init/generate", json={**INIT, **NODE, "batch_size": 4})
        assert response.status_code == 200
        assert node.manager.state == PoCState.GENERATING

    def test_second_generate_while_generating_is_refused(self, node):
        node.post("/init/generate", json={**INIT, **NODE, "batch_size": 4})
        first = node.manager.config
        response = node.post("/init/generate", json={**INIT, **NODE, "block_hash": "other"})
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]
        assert node.manager.config is first


class TestInitValidateEndpoint:
    def test_success(self, node):
        assert node.post("/init/validate", json=INIT).status_code == 200
        assert node.manager.state == PoCState.VALIDATING


class TestPhaseEndpoints:
    @pytest.mark.parametrize("phase", ["generate", "validate"])
    def test_requires_init_first(self, node, phase):
        response = node.post(f"/phase/{phase}")
        assert response.status_code == 400
        assert "not initialized" in response.json()["detail"]

    def test_generate_requires_node_info(self, node):
        node.post("/init", json=INIT)
        response = node.post("/phase/generate")
        assert response.status_code == 400
        assert "Node ID" in response.json()["detail"]
        assert node.manager.state == PoCState.IDLE

    def test_generate_while_generating_is_a_400_not_a_500(self, node):
        node.post("/init/generate", json={**INIT, **NODE, "batch_size": 4})
        response = node.post("/phase/generate")
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]

    def test_validate_after_init(self, node):
        node.post("/init", json=INIT)
        assert node.post("/phase/validate").status_code == 200
        assert node.manager.state == PoCState.VALIDATING


class TestStopEndpoint:
    def test_stop_success(self, node):
        response = node.post("/stop")
        assert response.status_code == 200
        assert response.json()["status"] == "OK"
        assert node.manager.state == PoCState.STOPPED


class TestValidateEndpoint:
    def test_requires_config(self, node):
        response = node.post("/validate", json=BATCH)
        assert response.status_code == 400
        assert "No round configured" in response.json()["detail"]

    def test_block_hash_mismatch(self, node):
        _configured(node)
        response = node.post("/validate", json={**BATCH, "block_hash": "wrong"})
        assert response.status_code == 400
        assert "Block hash mismatch" in response.json()["detail"]

    def test_validate_success(self, node):
        _configured(node)
        response = node.post("/validate", json=BATCH)
        assert response.status_code == 200
        data = response.json()
        assert data["nonces"] == [0, 1, 2]
        assert data["distances"] == [fake_distance(n) for n in (0, 1, 2)]  # 0, 0.37, 0.74
        assert data["valid"] == [True, True, False]
        assert data["mismatch"] == [False, False, True]  # reported 0.6 is not below 0.5
        assert data["n_invalid"] == 1
        # one mismatch in three nonces is far above the 5e-4 noise rate
        assert data["probability_honest"] < 0.01
        assert data["fraud_detected"] is True

    def test_answer_explains_itself(self, node):
        """``valid`` is the recomputed distance's; ``mismatch`` is what ``n_invalid`` counts."""
        _configured(node, r_target=1.6)
        # recomputed: 0 -> 0.0, 7 -> 0.59, 3 -> 1.11 (fake_distance)
        body = {**BATCH, "nonces": [0, 7, 3], "dist": [0.5, 1.9, 1.6]}
        data = node.post("/validate", json=body).json()
        assert data["valid"] == [True, True, True]
        assert data["mismatch"] == [False, True, True]
        assert data["n_invalid"] == sum(data["mismatch"]) == 2

    def test_length_mismatch_is_a_400(self, node):
        _configured(node)
        response = node.post("/validate", json={**BATCH, "dist": [0.1]})
        assert response.status_code == 400
        assert "same length" in response.json()["detail"]

    def test_too_many_nonces_is_a_413(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_VALIDATE_NONCES", "2")
        _configured(node)
        response = node.post("/validate", json=BATCH)
        assert response.status_code == 413
        assert "VLLM_POC_MAX_VALIDATE_NONCES" in response.json()["detail"]

    def test_engine_failure_is_a_503_with_message(self, node):
        _configured(node)
        node.engine.error = RuntimeError("worker died")
        response = node.post("/validate", json=BATCH)
        assert response.status_code == 503
        assert "worker died" in response.json()["detail"]

    def test_no_worker_answer_is_a_503_not_a_400(self, node):
        _configured(node)
        node.engine.answering = 99  # every rank answers None
        response = node.post("/validate", json=BATCH)
        assert response.status_code == 503
        assert "no worker answered poc_run(distances)" in response.json()["detail"]


class TestBadInput:
    @pytest.mark.parametrize(
        "body",
        [
            {**INIT, "r_target": "x"},
            {**INIT, "r_target": 0},
            {**INIT, "r_target": 3},
            {**INIT, "block_height": "100"},
            {**INIT, "batch_size": 0},
            {**INIT, "batch_size": -4},
            {**INIT, "seq_len": 0},
            {**INIT, "block_hash": ""},
            {**INIT, "node_id": 3, "node_count": 2},
            {**INIT, "node_count": 0},
            {k: v for k, v in INIT.items() if k != "public_key"},
        ],
    )
    def test_init_rejects(self, node, body):
        response = node.post("/init", json=body)
        assert response.status_code == 400, response.text
        assert node.manager.config is None and node.engine.calls == []

    @pytest.mark.parametrize("raw", ['{"r_target": NaN}', '{"r_target": Infinity}', "{bad json"])
    def test_init_rejects_raw(self, node, raw):
        prefix = '"block_hash": "h", "block_height": 1, "public_key": "k", '
        body = raw if raw.startswith("{bad") else raw.replace("{", "{" + prefix, 1)
        response = node.post("/init", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert node.manager.config is None

    @pytest.mark.parametrize(
        "body",
        [
            {**BATCH, "nonces": [-1, 0, 1]},
            {**BATCH, "nonces": "0,1,2"},
            {**BATCH, "dist": [0.1, "a", 0.2]},
            {**BATCH, "nonces": [2**70, 1, 2]},
            {k: v for k, v in BATCH.items() if k != "dist"},
        ],
    )
    def test_validate_rejects(self, node, body):
        _configured(node)
        calls = len(node.engine.calls)
        response = node.post("/validate", json=body)
        assert response.status_code == 400, response.text
        assert len(node.engine.calls) == calls


class TestPoCNotEnabled:
    def test_503_when_manager_not_set(self):
        app = vllm_like_app()
        protocols.attach(app)
        response = TestClient(app).get("/api/v1/pow/status")
        assert response.status_code == 503
        assert "PoC not enabled" in response.json()["detail"]


class TestInferenceBlocking:
    def test_guards_only_inference_routes(self, node):
        assert sorted(node.paused) == ["/v1/chat/completions", "/v1/completions"]

    def test_attaching_twice_is_a_no_op(self, node):
        count = len(node.app.router.routes)
        assert protocols.attach(node.app) == []
        assert len(node.app.router.routes) == count

    @pytest.mark.parametrize("state", [PoCState.GENERATING, PoCState.VALIDATING])
    def test_blocked_while_running(self, node, state):
        node.manager.state = state
        for path in ("/v1/completions", "/v1/chat/completions"):
            response = node.client.post(path)
            assert response.status_code == 503
            assert "PoC in progress" in response.json()["error"]["message"]
        assert node.client.get("/health").status_code == 200
        assert node.client.get("/v1/models").status_code == 200
        assert node.get("/status").status_code == 200

    @pytest.mark.parametrize("state", [PoCState.IDLE, PoCState.STOPPED])
    def test_open_otherwise(self, node, state):
        node.manager.state = state
        assert node.client.post("/v1/completions").json() == {"ok": True}

    def test_inference_during_validation_setting(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_INFERENCE_DURING_VALIDATION", "1")
        node.manager.state = PoCState.VALIDATING
        assert node.client.post("/v1/completions").status_code == 200
        node.manager.state = PoCState.GENERATING
        assert node.client.post("/v1/completions").status_code == 503

    def test_route_classification(self, node):
        paths = {r.path for r in node.app.router.routes if guards.is_inference_route(r)}
        assert "/api/v1/pow/validate" not in paths
        assert "/api/v1/pow/init" not in paths


class TestAuthentication:
    @pytest.fixture
    def keyed(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_API_KEY", "s3cret")
        return node

    def test_missing_key_is_401_and_touches_nothing(self, keyed):
        response = keyed.post("/init", json=INIT)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert keyed.manager.config is None

    @pytest.mark.parametrize("header", ["Bearer wrong", "s3cret", "Basic s3cret", "Bearer "])
    def test_wrong_key_is_401(self, keyed, header):
        assert keyed.get("/status", headers={"Authorization": header}).status_code == 401

    def test_right_key_passes(self, keyed):
        assert keyed.get("/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200

    def test_vllm_api_key_guards_only_vllms_routes(self, node, monkeypatch):
        """gonka's MLNode calls the PoC routes without a key: vLLM's --api-key must not close
        them (VLLM_POC_API_KEY does)."""
        node.app.state.args = SimpleNamespace(api_key=["k1", "k2"])
        monkeypatch.setenv("VLLM_API_KEY", "k3")
        assert node.get("/status").status_code == 200
        assert node.get("/versions").json()["auth"] == {"api_key": False, "allowed_clients": []}

    def test_no_key_configured_means_open(self, node, monkeypatch):
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
        assert node.get("/status").status_code == 200

    def test_malformed_body_without_key_is_401_not_parsed(self, keyed):
        response = keyed.post("/init", content=b'{"block_hash": ', headers={"content-type": "x"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


class TestLimits:
    def test_body_over_limit_is_413(self, node, monkeypatch):
        _configured(node)
        monkeypatch.setenv("VLLM_POC_MAX_BODY_BYTES", "100")
        body = {**BATCH, "nonces": list(range(50)), "dist": [0.1] * 50}
        response = node.post("/validate", json=body)
        assert response.status_code == 413
        assert "VLLM_POC_MAX_BODY_BYTES" in response.json()["error"]["message"]

    def test_oversized_body_is_413_before_parsing(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BODY_BYTES", "10")
        assert node.post("/init", content=b"{" * 50).status_code == 413

    @pytest.mark.parametrize(
        "url", ["ftp://host/x", "not a url", "http://", "file:///etc/passwd", "//host/path"]
    )
    def test_callback_url_must_be_http_with_host(self, node, url):
        response = node.post("/init", json={**INIT, "callback_url": url})
        assert response.status_code == 400
        assert "callback_url" in response.json()["detail"]
        assert node.manager.config is None

    def test_callback_allowlist(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_CALLBACK_ALLOWED_HOSTS", "receiver.local, 127.0.0.1")
        bad = node.post("/init", json={**INIT, "callback_url": "http://evil:80/x"})
        assert bad.status_code == 400
        assert "VLLM_POC_CALLBACK_ALLOWED_HOSTS" in bad.json()["detail"]
        assert node.manager.config is None
        good = node.post("/init", json={**INIT, "callback_url": "http://127.0.0.1:9/cb"})
        assert good.status_code == 200


class TestCalibrateAndVersion:
    def test_calibrate_samples_the_block_and_answers_r_target(self, node):
        response = node.post(
            "/calibrate",
            json={"block_hash": "b", "valid_rate": 0.5, "n_samples": 64, "seq_len": 32},
        )
        assert response.status_code == 200, response.text
        data = response.json()
        assert (data["block_hash"], data["n_samples"], data["valid_rate"]) == ("b", 64, 0.5)
        expected = sorted(fake_distance(n) for n in range(64))
        assert data["min"] == expected[0] and data["max"] == expected[-1]
        nonces = [n for w in node.engine.work("distances") for n in w.nonces]
        assert nonces == list(range(64))
        assert node.manager.state == PoCState.IDLE and node.manager.config is None

    @pytest.mark.parametrize("rate", [0, 1, -0.5, 2])
    def test_calibrate_rejects_impossible_rates(self, node, rate):
        response = node.post("/calibrate", json={"block_hash": "b", "valid_rate": rate})
        assert response.status_code == 400

    def test_calibrate_sample_limit(self, node, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_CALIBRATION_SAMPLES", "10")
        body = {"block_hash": "b", "valid_rate": 0.5, "n_samples": 11}
        assert node.post("/calibrate", json=body).status_code == 413

    def test_calibrate_while_generating_is_refused_before_any_rpc(self, node):
        node.post("/init/generate", json={**INIT, **NODE, "batch_size": 4})
        sizing = len(_rpcs(node, "poc_max_batch_size"))
        response = node.post("/calibrate", json={"block_hash": "b", "valid_rate": 0.5})
        assert response.status_code == 400
        assert "while generating" in response.json()["detail"]
        assert len(_rpcs(node, "poc_max_batch_size")) == sizing

    def test_version(self, node):
        from vllm_poc import __version__
        from vllm_poc.protocol.distance.math import PROTOCOL_VERSION

        data = node.get("/version").json()
        assert data["plugin_version"] == __version__
        assert data["protocol_version"] == PROTOCOL_VERSION
        assert data["model"] == "tiny"
        assert data["vllm_version"]
        assert data["options"]["random_projection"] is True


def test_the_engine_is_not_called_for_a_round_that_gives_its_batch(node):
    node.post("/init/validate", json={**INIT, "batch_size": 3})
    assert node.engine.calls == []


def test_a_model_poc_cannot_compute_is_refused_before_any_work():
    """422 with the workers' reasons on every round start; nothing is called or changed."""
    reason = "MambaMixer2 (MambaSpec) is not computed by the PoC forward: 2 layer(s), e.g. m0"
    with running_node() as node:
        node.manager.unsupported = [reason]
        for path, body in (
            ("/init", INIT),
            ("/init/generate", {**INIT, **NODE}),
            ("/init/validate", INIT),
            ("/calibrate", {"block_hash": "b", "valid_rate": 0.1}),
        ):
            response = node.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
            assert reason in response.json()["detail"]
        assert node.engine.calls == []
        assert node.get("/status").json()["state"] == "IDLE"
        assert node.get("/version").json()["unsupported"] == [reason]
        assert node.client.post("/v1/completions").status_code == 200
