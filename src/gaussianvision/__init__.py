"""GaussianVision: vision-language learning on images compressed to 2D Gaussian splats."""
from .splats import Splats, load, save

__version__ = "0.1.0"
__all__ = ["Splats", "load", "save", "__version__"]
