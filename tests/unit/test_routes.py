"""The seed's Phase 4 route tests (mocked manager), bad input, and inference blocking."""

from unittest.mock import AsyncMock, Mock

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from vllm_poc.config import PoCConfig, PoCState
from vllm_poc.data import ValidatedBatch
from vllm_poc.routes import guard_inference_routes, is_inference_route, router

INIT = {"block_hash": "hash1", "block_height": 100, "public_key": "node1", "r_target": 0.5}
BATCH = {
    "public_key": "node1",
    "block_hash": "hash1",
    "block_height": 100,
    "nonces": [0, 1, 2],
    "dist": [0.3, 0.4, 0.6],
    "node_id": 0,
}


@pytest.fixture
def mock_manager():
    manager = Mock()
    manager.state = PoCState.IDLE
    manager.config = None
    manager.default_batch_size = AsyncMock(return_value=32)
    manager.get_status.return_value = {
        "state": "IDLE",
        "valid_nonces": [],
        "valid_distances": [],
        "total_checked": 0,
        "total_valid": 0,
        "elapsed_seconds": 0.0,
        "rate_per_second": 0.0,
    }
    return manager


def _plain_400s(app: FastAPI) -> None:
    """Like vLLM's handler: validation errors become a 400 with the message as text.

    FastAPI's default handler echoes the offending input, which fails to encode for NaN.
    """

    async def handler(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.add_exception_handler(RequestValidationError, handler)


@pytest.fixture
def app(mock_manager):
    app = FastAPI()
    _plain_400s(app)
    app.include_router(router)
    app.state.poc_manager = mock_manager
    return app


@pytest.fixture
def client(app):
    return TestClient(app)


def _configured(mock_manager, **overrides):
    mock_manager.config = PoCConfig(**{**INIT, **overrides})


class TestStatusEndpoint:
    def test_status_returns_data(self, client):
        response = client.get("/api/v1/pow/status")
        assert response.status_code == 200
        data = response.json()
        assert data["state"] == "IDLE"
        assert data["valid_nonces"] == []
        assert "total_checked" in data


class TestInitEndpoint:
    def test_init_success(self, client, mock_manager):
        response = client.post("/api/v1/pow/init", json=INIT)
        assert response.status_code == 200
        assert response.json()["status"] == "OK"
        mock_manager.init_round.assert_called_once()
        config = mock_manager.init_round.call_args.args[0]
        assert (config.node_id, config.node_count, config.batch_size) == (-1, -1, 32)

    def test_defaults_come_from_settings_and_the_manager(self, client, mock_manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_SEQ_LEN", "64")
        mock_manager.default_batch_size.return_value = 7
        client.post("/api/v1/pow/init", json=INIT)
        config = mock_manager.init_round.call_args.args[0]
        assert (config.batch_size, config.seq_len) == (7, 64)
        mock_manager.default_batch_size.assert_awaited_once_with(64)

    def test_a_given_batch_size_is_not_resized(self, client, mock_manager):
        client.post("/api/v1/pow/init", json={**INIT, "batch_size": 5})
        assert mock_manager.init_round.call_args.args[0].batch_size == 5
        mock_manager.default_batch_size.assert_not_awaited()

    def test_sizing_failure_in_the_engine_is_a_503(self, client, mock_manager):
        mock_manager.default_batch_size.side_effect = TimeoutError("rpc timed out")
        response = client.post("/api/v1/pow/init", json=INIT)
        assert response.status_code == 503
        assert "sizing the batch" in response.json()["detail"]
        mock_manager.init_round.assert_not_called()

    def test_sizing_refusal_is_a_400(self, client, mock_manager):
        mock_manager.default_batch_size.side_effect = ValueError("seq_len 999 exceeds the max")
        response = client.post(
            "/api/v1/pow/init/generate", json={**INIT, "node_id": 0, "node_count": 1}
        )
        assert response.status_code == 400
        assert "exceeds" in response.json()["detail"]
        mock_manager.init_round.assert_not_called()

    def test_init_blocked_when_generating(self, client, mock_manager):
        mock_manager.state = PoCState.GENERATING
        response = client.post("/api/v1/pow/init", json=INIT)
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]

    def test_manager_refusal_is_a_400(self, client, mock_manager):
        mock_manager.init_round.side_effect = ValueError("seq_len 999 exceeds the model's max")
        response = client.post("/api/v1/pow/init", json=INIT)
        assert response.status_code == 400
        assert "exceeds the model's max" in response.json()["detail"]


class TestInitGenerateEndpoint:
    def test_requires_node_id(self, client, mock_manager):
        response = client.post("/api/v1/pow/init/generate", json=INIT)
        assert response.status_code == 400
        assert "Node ID" in response.json()["detail"]
        mock_manager.init_round.assert_not_called()

    def test_success_with_node_info(self, client, mock_manager):
        response = client.post(
            "/api/v1/pow/init/generate", json={**INIT, "node_id": 0, "node_count": 1}
        )
        assert response.status_code == 200
        mock_manager.init_round.assert_called_once()
        mock_manager.start_generate.assert_called_once()

    def test_second_generate_while_generating_is_refused(self, client, mock_manager):
        mock_manager.state = PoCState.GENERATING
        response = client.post(
            "/api/v1/pow/init/generate", json={**INIT, "node_id": 0, "node_count": 1}
        )
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]
        mock_manager.init_round.assert_not_called()


class TestInitValidateEndpoint:
    def test_success(self, client, mock_manager):
        assert client.post("/api/v1/pow/init/validate", json=INIT).status_code == 200
        mock_manager.init_round.assert_called_once()
        mock_manager.start_validate.assert_called_once()


class TestPhaseGenerateEndpoint:
    def test_requires_init_first(self, client):
        response = client.post("/api/v1/pow/phase/generate")
        assert response.status_code == 400
        assert "not initialized" in response.json()["detail"]

    def test_requires_node_info(self, client, mock_manager):
        _configured(mock_manager, node_id=-1, node_count=-1)
        response = client.post("/api/v1/pow/phase/generate")
        assert response.status_code == 400
        assert "Node ID" in response.json()["detail"]

    def test_runtime_error_is_a_400_not_a_500(self, client, mock_manager):
        _configured(mock_manager)
        mock_manager.start_generate.side_effect = RuntimeError("Round already in progress")
        response = client.post("/api/v1/pow/phase/generate")
        assert response.status_code == 400
        assert "already in progress" in response.json()["detail"]


class TestPhaseValidateEndpoint:
    def test_requires_init_first(self, client):
        response = client.post("/api/v1/pow/phase/validate")
        assert response.status_code == 400
        assert "not initialized" in response.json()["detail"]

    def test_success_after_init(self, client, mock_manager):
        _configured(mock_manager)
        assert client.post("/api/v1/pow/phase/validate").status_code == 200
        mock_manager.start_validate.assert_called_once()


class TestStopEndpoint:
    def test_stop_success(self, client, mock_manager):
        response = client.post("/api/v1/pow/stop")
        assert response.status_code == 200
        assert response.json()["status"] == "OK"
        mock_manager.stop_round.assert_called_once()


class TestValidateEndpoint:
    def test_requires_config(self, client):
        response = client.post("/api/v1/pow/validate", json=BATCH)
        assert response.status_code == 400
        assert "No round configured" in response.json()["detail"]

    def test_block_hash_mismatch(self, client, mock_manager):
        _configured(mock_manager, block_hash="correct_hash")
        response = client.post("/api/v1/pow/validate", json={**BATCH, "block_hash": "wrong"})
        assert response.status_code == 400
        assert "Block hash mismatch" in response.json()["detail"]

    def test_validate_success(self, client, mock_manager):
        _configured(mock_manager)
        mock_manager.validate_batch = AsyncMock(
            return_value=ValidatedBatch(
                public_key="node1",
                block_hash="hash1",
                block_height=100,
                nonces=[0, 1, 2],
                received_dist=[0.3, 0.4, 0.6],
                dist=[0.3, 0.4, 0.6],
                r_target=0.5,
                fraud_threshold=0.01,
                node_id=0,
            )
        )
        response = client.post("/api/v1/pow/validate", json=BATCH)
        assert response.status_code == 200
        data = response.json()
        assert data["nonces"] == [0, 1, 2]
        assert data["distances"] == [0.3, 0.4, 0.6]
        assert data["valid"] == [True, True, False]
        assert data["n_invalid"] == 1
        # one mismatch in three nonces is far above the 5e-4 noise rate
        assert data["probability_honest"] < 0.01
        assert data["fraud_detected"] is True

    def test_length_mismatch_is_a_400(self, client, mock_manager):
        _configured(mock_manager)
        response = client.post("/api/v1/pow/validate", json={**BATCH, "dist": [0.1]})
        assert response.status_code == 400
        assert "same length" in response.json()["detail"]

    def test_too_many_nonces_is_a_413(self, client, mock_manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_VALIDATE_NONCES", "2")
        _configured(mock_manager)
        response = client.post("/api/v1/pow/validate", json=BATCH)
        assert response.status_code == 413
        assert "VLLM_POC_MAX_VALIDATE_NONCES" in response.json()["detail"]

    def test_engine_failure_is_a_503_with_message(self, client, mock_manager):
        _configured(mock_manager)
        mock_manager.validate_batch = AsyncMock(side_effect=TimeoutError("rpc timed out"))
        response = client.post("/api/v1/pow/validate", json=BATCH)
        assert response.status_code == 503
        assert "rpc timed out" in response.json()["detail"]


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
    def test_init_rejects(self, client, mock_manager, body):
        response = client.post("/api/v1/pow/init", json=body)
        assert 400 <= response.status_code < 500, response.text
        mock_manager.init_round.assert_not_called()

    @pytest.mark.parametrize("raw", ['{"r_target": NaN}', '{"r_target": Infinity}', "{bad json"])
    def test_init_rejects_raw(self, client, mock_manager, raw):
        body = raw if raw.startswith("{bad") else raw.replace("{", "{" + _init_prefix(), 1)
        response = client.post(
            "/api/v1/pow/init", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
        mock_manager.init_round.assert_not_called()

    @pytest.mark.parametrize(
        "body",
        [
            {**BATCH, "nonces": [-1, 0, 1]},
            {**BATCH, "nonces": "0,1,2"},
            {**BATCH, "dist": [0.1, "a", 0.2]},
            {k: v for k, v in BATCH.items() if k != "dist"},
        ],
    )
    def test_validate_rejects(self, client, mock_manager, body):
        _configured(mock_manager)
        response = client.post("/api/v1/pow/validate", json=body)
        assert 400 <= response.status_code < 500, response.text
        mock_manager.validate_batch.assert_not_called()


def _init_prefix() -> str:
    return '"block_hash": "h", "block_height": 1, "public_key": "k", '


class TestPoCNotEnabled:
    def test_503_when_manager_not_set(self):
        app = FastAPI()
        app.include_router(router)
        response = TestClient(app).get("/api/v1/pow/status")
        assert response.status_code == 503
        assert "PoC not enabled" in response.json()["detail"]


class TestInferenceBlocking:
    @pytest.fixture
    def served(self, mock_manager):
        app = FastAPI()

        @app.post("/v1/completions")
        async def completions():
            return {"ok": True}

        @app.post("/v1/chat/completions")
        async def chat():
            return {"ok": True}

        @app.get("/v1/models")
        async def models():
            return {"ok": True}

        @app.get("/health")
        async def health():
            return {"ok": True}

        app.include_router(router)
        guarded = guard_inference_routes(app)
        app.state.poc_manager = mock_manager
        return app, guarded

    def test_guards_only_inference_routes(self, served):
        _, guarded = served
        assert sorted(guarded) == ["/v1/chat/completions", "/v1/completions"]

    def test_guarding_twice_is_a_no_op(self, served):
        app, _ = served
        assert guard_inference_routes(app) == []

    @pytest.mark.parametrize("state", [PoCState.GENERATING, PoCState.VALIDATING])
    def test_blocked_while_running(self, served, mock_manager, state):
        app, _ = served
        mock_manager.state = state
        client = TestClient(app)
        for path in ("/v1/completions", "/v1/chat/completions"):
            response = client.post(path)
            assert response.status_code == 503
            assert "PoC in progress" in response.json()["error"]["message"]
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 200
        assert client.get("/api/v1/pow/status").status_code == 200

    @pytest.mark.parametrize("state", [PoCState.IDLE, PoCState.STOPPED])
    def test_open_otherwise(self, served, mock_manager, state):
        app, _ = served
        mock_manager.state = state
        assert TestClient(app).post("/v1/completions").json() == {"ok": True}

    def test_inference_during_validation_setting(self, served, mock_manager, monkeypatch):
        app, _ = served
        monkeypatch.setenv("VLLM_POC_INFERENCE_DURING_VALIDATION", "1")
        client = TestClient(app)
        mock_manager.state = PoCState.VALIDATING
        assert client.post("/v1/completions").status_code == 200
        mock_manager.state = PoCState.GENERATING
        assert client.post("/v1/completions").status_code == 503

    def test_route_classification(self, served):
        app, _ = served
        paths = {route.path for route in app.router.routes if is_inference_route(route)}
        assert "/api/v1/pow/validate" not in paths
        assert "/api/v1/pow/init" not in paths


class TestAuthentication:
    @pytest.fixture
    def keyed(self, client, monkeypatch):
        monkeypatch.setenv("VLLM_POC_API_KEY", "s3cret")
        return client

    def test_missing_key_is_401_and_touches_nothing(self, keyed, mock_manager):
        response = keyed.post("/api/v1/pow/init", json=INIT)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        mock_manager.init_round.assert_not_called()

    @pytest.mark.parametrize("header", ["Bearer wrong", "s3cret", "Basic s3cret", "Bearer "])
    def test_wrong_key_is_401(self, keyed, header):
        response = keyed.get("/api/v1/pow/status", headers={"Authorization": header})
        assert response.status_code == 401

    def test_right_key_passes(self, keyed):
        response = keyed.get("/api/v1/pow/status", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200

    def test_falls_back_to_vllm_api_key(self, app, client):
        from types import SimpleNamespace

        app.state.args = SimpleNamespace(api_key=["k1", "k2"])
        assert client.get("/api/v1/pow/status").status_code == 401
        assert (
            client.get("/api/v1/pow/status", headers={"Authorization": "Bearer k2"}).status_code
            == 200
        )

    def test_no_key_configured_means_open(self, client, monkeypatch):
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
        assert client.get("/api/v1/pow/status").status_code == 200


class TestLimits:
    def test_body_over_limit_is_413(self, client, mock_manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BODY_BYTES", "100")
        _configured(mock_manager)
        body = {**BATCH, "nonces": list(range(50)), "dist": [0.1] * 50}
        response = client.post("/api/v1/pow/validate", json=body)
        assert response.status_code == 413
        assert "VLLM_POC_MAX_BODY_BYTES" in response.json()["detail"]

    @pytest.mark.parametrize(
        "url", ["ftp://host/x", "not a url", "http://", "file:///etc/passwd", "//host/path"]
    )
    def test_callback_url_must_be_http_with_host(self, client, mock_manager, url):
        response = client.post("/api/v1/pow/init", json={**INIT, "callback_url": url})
        assert response.status_code == 400
        assert "callback_url" in response.json()["detail"]
        mock_manager.init_round.assert_not_called()

    def test_callback_allowlist(self, client, mock_manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_CALLBACK_ALLOWED_HOSTS", "receiver.local, 127.0.0.1")
        bad = client.post("/api/v1/pow/init", json={**INIT, "callback_url": "http://evil:80/x"})
        assert bad.status_code == 400
        assert "VLLM_POC_CALLBACK_ALLOWED_HOSTS" in bad.json()["detail"]
        good = client.post(
            "/api/v1/pow/init", json={**INIT, "callback_url": "http://127.0.0.1:9/cb"}
        )
        assert good.status_code == 200


class TestCalibrateAndVersion:
    def test_calibrate_passes_a_config_and_returns_the_result(self, client, mock_manager):
        mock_manager.calibrate = AsyncMock(return_value={"r_target": 1.41})
        response = client.post(
            "/api/v1/pow/calibrate",
            json={"block_hash": "b", "valid_rate": 0.1, "n_samples": 64, "seq_len": 32},
        )
        assert response.status_code == 200
        assert response.json() == {"r_target": 1.41}
        config, n, rate = mock_manager.calibrate.call_args.args
        assert (config.block_hash, config.seq_len, n, rate) == ("b", 32, 64, 0.1)

    @pytest.mark.parametrize("rate", [0, 1, -0.5, 2])
    def test_calibrate_rejects_impossible_rates(self, client, rate):
        response = client.post(
            "/api/v1/pow/calibrate", json={"block_hash": "b", "valid_rate": rate}
        )
        assert response.status_code == 400

    def test_calibrate_sample_limit(self, client, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_CALIBRATION_SAMPLES", "10")
        response = client.post(
            "/api/v1/pow/calibrate", json={"block_hash": "b", "valid_rate": 0.5, "n_samples": 11}
        )
        assert response.status_code == 413

    def test_calibrate_while_generating_is_a_400(self, client, mock_manager):
        mock_manager.calibrate = AsyncMock(side_effect=RuntimeError("Cannot calibrate while"))
        response = client.post("/api/v1/pow/calibrate", json={"block_hash": "b", "valid_rate": 0.5})
        assert response.status_code == 400

    def test_version(self, client, mock_manager):
        from vllm_poc import __version__
        from vllm_poc.gpu_random import PROTOCOL_VERSION

        mock_manager.model_name = "tiny"
        data = client.get("/api/v1/pow/version").json()
        assert data["plugin_version"] == __version__
        assert data["protocol_version"] == PROTOCOL_VERSION
        assert data["model"] == "tiny"
        assert data["vllm_version"]
        assert data["options"]["random_projection"] is True


class TestGuardBeforeParsing:
    """``attach`` checks the key and the declared size before FastAPI parses the body."""

    @pytest.fixture
    def attached(self, mock_manager, monkeypatch):
        from vllm_poc.routes import attach

        app = FastAPI()
        _plain_400s(app)
        attach(app)
        app.state.poc_manager = mock_manager
        monkeypatch.setenv("VLLM_POC_API_KEY", "k")
        return TestClient(app)

    def test_malformed_body_without_key_is_401_with_scheme(self, attached, mock_manager):
        response = attached.post(
            "/api/v1/pow/init", content=b'{"block_hash": ', headers={"content-type": "x"}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        mock_manager.init_round.assert_not_called()

    def test_oversized_body_is_413_before_parsing(self, attached, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BODY_BYTES", "10")
        response = attached.post(
            "/api/v1/pow/init", content=b"{" * 50, headers={"Authorization": "Bearer k"}
        )
        assert response.status_code == 413

    def test_nonces_beyond_64_bits_are_a_400(self, attached, mock_manager):
        _configured(mock_manager)
        body = {**BATCH, "nonces": [2**70, 1, 2]}
        response = attached.post(
            "/api/v1/pow/validate", json=body, headers={"Authorization": "Bearer k"}
        )
        assert response.status_code == 400
