"""The ``vllm.general_plugins`` entry point: everything the plugin changes in vLLM, and when.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers),
possibly more than once; it is cheap and idempotent, never touches CUDA, and does nothing but
declare its settings unless ``VLLM_POC_ENABLED`` is true. When enabled:

- every process: the ``worker-extension`` patch (``vllm_poc.patches``) names the PoC worker
  extension in the engine config, so every worker gains the ``poc_*`` methods that the API
  server reaches with ``collective_rpc``;
- the API server: vLLM's ``vllm.endpoint_plugins`` contract adds the routes and the round
  manager (``server.endpoint.PoCEndpointPlugin``) when ``VLLM_PLUGINS`` names ``vllm_poc``;
  otherwise the ``api-server-app`` patch adds the same from ``build_app``/``init_app_state``.

A node asked to run PoC that cannot fails at start: a ``VLLM_POC_*`` value that does not parse
raises ``setting.BadSetting`` (naming the variable, its value and what is allowed), a missing seam
raises ``compat.SeamNotFound`` (naming the seam and the vLLM version) out of ``register()``, and
the server checks at start that every worker answers ``poc_ready``.
"""

from __future__ import annotations

import os

from vllm_poc import envs


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group."""
    _declare_settings()
    unknown = envs.check()
    if unknown:
        from vllm_poc.log import get_logger

        get_logger(__name__).warning(
            "vllm-poc: %s name no setting of vllm-poc (see its README); ignored",
            ", ".join(unknown),
        )
    if not envs.enabled():
        return
    from vllm_poc.patches import PATCHES

    for patch in PATCHES:
        if patch.wanted():
            patch.apply()


def _declare_settings() -> None:
    """Tell vLLM our ``VLLM_POC_*`` variables exist, when any is set.

    vLLM warns about (or, with ``--fail-on-environ-validation``, refuses) unknown ``VLLM_*``
    variables.
    """
    if any(name in os.environ for name in envs.SETTINGS):
        from vllm_poc import compat

        compat.declare_environment_variables({n: s.get for n, s in envs.SETTINGS.items()})
