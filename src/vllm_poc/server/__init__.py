"""The API server process: the endpoint plugin, routes and guards, the manager, callbacks."""
