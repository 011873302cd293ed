"""The shared training loop (``loop.train``), its Hydra config (``config``), checkpoints
(``checkpoint``), experiment tracking (``tracking``) and ``policystack train`` (``commands``)."""
