"""The training engine: the loop (`train`), its data, state and plan, distributed helpers, optimisers,
EMA and tracking."""
