"""The artifact protocol (the network's): its math (``math``: reflections, the pick, fp16
artifacts, the mismatch rule and the binomial test) and HTTP messages (``wire``)."""
