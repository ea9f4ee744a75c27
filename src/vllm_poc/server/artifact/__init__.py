"""The artifact protocol (the network's) on the API server: its node, ``/generate`` jobs, the
stream of generated artifacts and routes (``routes.router``), registered in
``server.protocols``."""
