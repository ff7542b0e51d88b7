"""recae: movie recommendations from autoencoders trained with masked MSE.

Importing this package has no side effects and does not import torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
