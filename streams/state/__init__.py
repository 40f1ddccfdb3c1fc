"""Redis as the engine's state and read models: stores, the cluster store, recovery, the projector."""
