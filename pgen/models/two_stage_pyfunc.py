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
        import torch

        from pgen import config as config_mod
        from pgen.latent_steps import draw_codes
        from pgen.steps import decode

        params = params or {}
        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        values = np.asarray(values, dtype=np.float32)
        if values.size == 1:
            n = int(values.reshape(-1)[0])
            if n < 1:
                raise ValueError(f"number of samples must be at least 1, got {n}")
            rng = torch.Generator().manual_seed(int(params.get("seed", 0)))
            z = draw_codes(self.nets, self.hyper, n, rng)
        else:
            z = torch.from_numpy(values.reshape(len(values), -1))
            if z.shape[1] != self.hyper.dim:
                raise ValueError(f"latent vectors must have {self.hyper.dim} components, got {z.shape[1]}")
        images = config_mod.from_model(decode(self.nets["vae"], z, "vae"), self.config.data)
        out = images.numpy().astype(np.float32)
        return out[:, 0] if out.shape[1] == 1 else out


mlflow.models.set_model(TwoStageModel())
