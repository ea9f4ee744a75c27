"""The engine's worker processes: the extension reached by ``collective_rpc`` and the forward."""
