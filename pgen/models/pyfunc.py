"""A trained generator (or VAE decoder) as an MLflow pyfunc model (logged as "models from code").

``predict`` takes either a number of samples (an int, ``[[n]]`` or a one-cell DataFrame) or latent
vectors ``[N, latent_dim]``, and returns images ``[N, H, W]`` (``[N, C, H, W]`` for several
channels) in the dataset's stored units (the pixel scaling undone). ``params={"seed": s}`` makes
the drawn latent vectors reproducible. A batch-norm generator (dcgan) normalises with the statistics
of the batch being drawn, as in training: draw samples in batches (say 16 or more), not one by one.

The weights file holds only tensors and plain values (loaded with ``weights_only=True``).
"""

import mlflow
import numpy as np


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from pgen import config as config_mod
        from pgen.steps import build_generator

        payload = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.config = config_mod.from_flat(payload["config"], source="model weights")
        self.family = self.config.family
        self.net = build_generator(self.config)
        self.net.load_state_dict(payload["net"])
        self.net.eval()

    def predict(self, context, model_input: np.ndarray, params=None):  # an ndarray hint: no schema validation
        import torch

        from pgen import config as config_mod
        from pgen.models.pyfunc_io import images_out, latents
        from pgen.steps import decode

        latent_dim = self.config.model.latent_dim
        z = latents(model_input, params, latent_dim, lambda n, rng: torch.randn(n, latent_dim, generator=rng))
        return images_out(config_mod.from_model(decode(self.net, z, self.family), self.config.data))


mlflow.models.set_model(GeneratorModel())
