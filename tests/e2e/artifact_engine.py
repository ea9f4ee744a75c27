"""Artifacts from a real vLLM engine through the worker extension, for the artifact tests (run as
``python -m tests.e2e.artifact_engine MODEL_DIR JOB_JSON``; prints one JSON line).

Drives the worker method that the artifact API calls, in vLLM's own engine
(``LLM.collective_rpc``), with the plugin enabled as an operator enables it. The job names the
engine's mode (``eager``: ``--enforce-eager``, else compiled as operators run it) and the calls:
``{name: [block_hash, public_key, nonces, seq_len]}`` or ``{name: {"args": [...], "eager": true}}``
(the eager reference on a compiled engine), run in order; a call named ``compilations`` asks
instead for the PoC graphs compiled by then. ``engine`` (optional): further ``LLM`` arguments.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from vllm_poc.work import Work


def _answer(llm: Any, method: str, *args: Any) -> Any:
    return next(a for a in llm.collective_rpc(method, args=args) if a is not None)


def _call(llm: Any, name: str, call: list[Any] | dict[str, Any]) -> Any:
    if name == "compilations":
        return _answer(llm, "poc_compilations")
    args, eager = (call, False) if isinstance(call, list) else (call["args"], call["eager"])
    return _answer(llm, "poc_run", Work("artifacts", *args, eager=eager).payload())


def main(model_dir: str, job: str) -> None:
    from vllm import LLM

    spec = json.loads(job)
    engine = spec.get("engine", {})
    llm = LLM(
        model=model_dir, max_model_len=512, dtype="bfloat16", enforce_eager=spec["eager"], **engine
    )
    out = {name: _call(llm, name, call) for name, call in spec["calls"].items()}
    print("ARTIFACTS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
