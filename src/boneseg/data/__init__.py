"""The data layer: dataset layout, labels, masks and their cache, datasets, transforms, splits, synthesis."""
