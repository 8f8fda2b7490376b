"""Training the engine's restoration model (``make train``): a tool of its own, not part of any wheel."""
