"""The distance protocol, with no vLLM import: randomness and math (torch), the round's values,
the batches, the validation rule and the HTTP messages (pydantic).

Import the submodules; this package imports nothing itself, so that the client can load the
messages without torch.
"""
