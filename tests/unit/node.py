"""An in-process PoC node: vLLM-shaped FastAPI app with the real routes, guards and manager,
and a fake engine. What the HTTP-level unit tests, the fuzzer and the auth matrix run against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tests.unit.fakes import FakeEngine
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.server import protocols
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines

MAX_MODEL_LEN = 512


def vllm_like_app() -> FastAPI:
    """An app with vLLM's answer to malformed bodies (400 with the message as text; FastAPI's
    own handler echoes the input, which fails to encode for NaN) and two inference routes."""
    app = FastAPI()

    async def handler(request: object, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.add_exception_handler(RequestValidationError, handler)

    @app.post("/v1/completions")
    async def completions() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/models")
    async def models() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


@dataclass
class Node:
    app: FastAPI
    client: TestClient
    manager: PoCManager
    engine: FakeEngine
    paused: list[str]

    def post(self, path: str, **kwargs: object) -> object:
        return self.client.post(POW_PREFIX + path, **kwargs)

    def get(self, path: str, **kwargs: object) -> object:
        return self.client.get(POW_PREFIX + path, **kwargs)


@contextmanager
def running_node(engine: FakeEngine | None = None) -> Iterator[Node]:
    """The node with its event loop running between requests (generation tasks live on)."""
    engine = engine or FakeEngine(delay=0.001)
    app = vllm_like_app()
    paused = protocols.attach(app)
    manager = PoCManager(
        Engines([EngineRPC(engine)]), max_model_len=MAX_MODEL_LEN, model_name="tiny"
    )
    app.state.poc_manager = manager
    with TestClient(app) as client:
        yield Node(app, client, manager, engine, paused)
        client.post(POW_PREFIX + "/stop")


ARTIFACT_MODEL = "tiny-artifact-model"


@contextmanager
def running_artifact_node(engine: FakeEngine | None = None) -> Iterator[Node]:
    """The same for the artifact protocol (``VLLM_POC_PROTOCOL=artifact``): its routes and an
    ``ArtifactNode`` serving ``ARTIFACT_MODEL`` (``manager`` holds the node)."""
    from vllm_poc.server.artifact.node import ArtifactNode

    engine = engine or FakeEngine(delay=0.001)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_POC_PROTOCOL", "artifact")
        app = vllm_like_app()
        paused = protocols.attach(app)
        node = ArtifactNode(Engines([EngineRPC(engine)]), [ARTIFACT_MODEL], max_model_len=512)
        app.state.poc_manager = node
        with TestClient(app) as client:
            yield Node(app, client, node, engine, paused)  # type: ignore[arg-type]
            client.post(POW_PREFIX + "/stop")
