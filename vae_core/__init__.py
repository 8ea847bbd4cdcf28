"""vae_core: anomaly detection with a Gaussian variational auto-encoder (Kingma & Welling).

The library knows nothing of Prefect; ``flows/`` wires it into scheduled pipelines.
"""

from vae_core.estimator.detector import VAEDetector

__all__ = ["VAEDetector"]
__version__ = "0.1.0"
