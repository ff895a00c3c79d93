"""The training engine: the loop (`train`), checkpoints, distributed helpers, optimisers and EMA."""
