"""Artifacts from a real vLLM engine through the worker extension, for the artifact tests (run as
``python -m tests.e2e.artifact_engine MODEL_DIR JOB_JSON``; prints one JSON line).

The artifact protocol's HTTP API is not served yet; this drives the same worker method that it
will call, in vLLM's own engine (``LLM.collective_rpc``), with the plugin enabled as an operator
enables it.
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, job: str) -> None:
    from vllm import LLM

    spec = json.loads(job)
    llm = LLM(model=model_dir, max_model_len=512, dtype="bfloat16", enforce_eager=True)
    out = {}
    for name, call in spec.items():
        answers = llm.collective_rpc("poc_artifacts", args=tuple(call))
        out[name] = next(a for a in answers if a is not None)
    print("ARTIFACTS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
