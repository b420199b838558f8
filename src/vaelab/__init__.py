"""vaelab: variational autoencoders and Laplace's method."""

from vaelab.errors import VaelabError

__all__ = ["VaelabError", "__version__"]
__version__ = "0.1.0"
