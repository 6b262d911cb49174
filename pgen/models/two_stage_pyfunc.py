"""A two-stage run (latent-code generator + VAE decoder) as an MLflow pyfunc model ("models from code").

``predict`` takes a number of samples (an int, ``[[n]]`` or a one-cell DataFrame) and returns
images ``[N, H, W]`` (``[N, C, H, W]``) in the dataset's stored units: codes drawn from the latent
model (flow, ewm or gmm), decoded by the VAE, the pixel scaling undone. ``params={"seed": s}``
makes the draw reproducible. Latent vectors ``[N, latent_dim]`` are decoded directly.

The weights file holds only tensors and plain values (loaded with ``weights_only=True``).
"""

import mlflow
import numpy as np


class TwoStageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from pgen.latent import from_bundle

        payload = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.config, self.hyper, self.nets = from_bundle(payload)

    def predict(self, context, model_input: np.ndarray, params=None):
        from pgen import config as config_mod
        from pgen.latent_steps import draw_codes
        from pgen.models.pyfunc_io import images_out, latents
        from pgen.steps import decode

        z = latents(model_input, params, self.hyper.dim, lambda n, rng: draw_codes(self.nets, self.hyper, n, rng))
        return images_out(config_mod.from_model(decode(self.nets["vae"], z, "vae"), self.config.data))


mlflow.models.set_model(TwoStageModel())
