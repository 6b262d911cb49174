"""pgen: generative models of particle-detector images, tracked in MLflow."""

__version__ = "0.1.0"
