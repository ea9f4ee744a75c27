"""Client ``prompt_embeds`` on a node where only the plugin enabled them (for its compiled PoC
forward): refused with 400 naming the setting, before the route runs; everything else passes."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.node import running_node
from vllm_poc.server.guards import PROMPT_EMBEDS_REFUSED, carries_prompt_embeds

EMBEDS = base64.b64encode(b"\0" * 16).decode()
COMPLETION = {"model": "m", "prompt_embeds": EMBEDS, "max_tokens": 4}
CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": [{"type": "prompt_embeds", "data": EMBEDS}]}],
}


@pytest.mark.parametrize(
    ("body", "carries"),
    [
        (COMPLETION, True),
        ({**COMPLETION, "prompt_embeds": [EMBEDS]}, True),
        (CHAT, True),
        ({"model": "m", "prompt": "say prompt_embeds please"}, False),
        ({"model": "m", "prompt": "hi", "prompt_embeds": None}, False),
        ({"model": "m", "prompt": "hi", "prompt_embeds": []}, False),
        ({"model": "m", "prompt": "hi"}, False),
    ],
)
def test_what_counts_as_prompt_embeds(body, carries):
    assert carries_prompt_embeds(json.dumps(body).encode()) is carries


def test_a_body_that_is_not_json_is_left_to_vllm():
    assert carries_prompt_embeds(b'{"prompt_embeds": ') is False


@pytest.fixture
def node():
    with running_node() as n:
        n.app.state.poc_prompt_embeds_allowed = False
        yield n


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)]
)
def test_refused_with_400_naming_the_setting(node, path, body):
    response = node.client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == PROMPT_EMBEDS_REFUSED
    assert "--enable-prompt-embeds" in PROMPT_EMBEDS_REFUSED
    assert node.get("/status").json()["state"] == "IDLE"


def test_ordinary_requests_reach_the_route_with_their_body(node):
    response = node.client.post("/v1/completions", json={"model": "m", "prompt": "prompt_embeds"})
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_allowed_when_the_operator_enabled_them(node):
    node.app.state.poc_prompt_embeds_allowed = True
    assert node.client.post("/v1/completions", json=COMPLETION).status_code == 200


def test_while_generating_the_pause_answers_first(node):
    node.post(
        "/init/generate",
        json={
            "block_hash": "b",
            "block_height": 1,
            "public_key": "k",
            "r_target": 1.0,
            "node_id": 0,
            "node_count": 1,
            "batch_size": 4,
            "seq_len": 8,
        },
    )
    assert node.client.post("/v1/completions", json=COMPLETION).status_code == 503
