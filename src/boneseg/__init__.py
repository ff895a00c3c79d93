"""boneseg: hand-bone X-ray segmentation, from raw radiographs to a competition submission."""
from boneseg.classes import CLASSES, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["CLASSES", "NUM_CLASSES", "__version__"]
