"""genpromp: a reproducible implementation of GenPromp (ICCV'23) for weakly supervised object localization."""

__all__ = ["__version__"]
__version__ = "0.1.0"
