"""The distance protocol (the first one): its math (``math``), a round's values (``round``),
proof batches (``batches``) and HTTP messages (``wire``). Import the submodules; this package
imports nothing itself, so that the client loads the messages without torch."""
