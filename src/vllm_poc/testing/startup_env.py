"""What a test's vLLM process on CPU starts with: ``cpu_startup`` (a ``sitecustomize``) first on
its path, the switch that has it fork vLLM's engine processes (``LocalServer``, the
benchmarks' tests) and the inductor cache the e2e suite's processes share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CPU_STARTUP = Path(__file__).parent / "cpu_startup"
"""Put on the ``PYTHONPATH`` of servers on CPU: its ``sitecustomize`` lets AMX kernels run and,
when asked (``fork``), has vLLM fork its engine processes."""
FORK_ENV = "POC_TESTING_FORK"
"""Set to 1 for ``cpu_startup`` to have vLLM fork its EngineCore and workers (``fork``). Neither
``VLLM_`` nor ``VLLM_POC_``: both vLLM and the plugin warn about names they do not know."""
SPAWNED = "testing/cpu_startup: a process was spawned although POC_TESTING_FORK=1"
"""What ``cpu_startup`` writes to a server's log from a process that multiprocessing spawned
although ``fork`` was asked (the tests check its wording against the hook's)."""

INDUCTOR_CACHE_ENV = "POC_TESTING_INDUCTOR_CACHE"
"""Names the one folder of torch inductor's cache for every compile of a process that runs
``cpu_startup`` (vLLM keeps one per configuration hash): the e2e suite sets it for the servers
and engines it starts (``shared_inductor_cache``)."""


def shared_inductor_cache() -> Path:
    """The inductor cache the tests' vLLM processes share: beside vLLM's own compile caches
    (``VLLM_CACHE_ROOT`` as vLLM resolves it), kept between runs as those are (its entries are
    keyed by what they hold)."""
    from vllm import envs

    return Path(envs.VLLM_CACHE_ROOT) / "torch_compile_cache" / "poc-tests-inductor"


def with_cpu_startup(env: Mapping[str, str], fork: bool) -> dict[str, str]:
    """``env`` for a vLLM process on CPU: ``CPU_STARTUP`` first on its path and, with ``fork``,
    vLLM's engine processes forked (``FORK_ENV``; an inherited start method dropped: the hook
    alone decides)."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([str(CPU_STARTUP), *filter(None, [env.get("PYTHONPATH")])])
    if fork:
        env[FORK_ENV] = "1"
        env.pop("VLLM_WORKER_MULTIPROC_METHOD", None)
    return env
