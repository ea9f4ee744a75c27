"""The distance protocol on the API server: its round manager, generation loop, proofs and
routes (``routes.router``), registered in ``server.protocols``."""
