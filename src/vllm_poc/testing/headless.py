"""``vllm serve MODEL --headless ARGS`` on any vLLM build: a secondary host of a multi-host
deployment (engines, no API server), for ``LocalServer(headless=True)``.

Run: python -m vllm_poc.testing.headless MODEL [vllm serve options]
"""

from __future__ import annotations

import sys

from vllm_poc import compat

if __name__ == "__main__":
    compat.serve_headless(sys.argv[1:])
