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
        from pgen.steps import decode

        params = params or {}
        latent_dim = self.config.model.latent_dim
        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        values = np.asarray(values, dtype=np.float32)
        if values.size == 1:
            n = int(values.reshape(-1)[0])
            if n < 1:
                raise ValueError(f"number of samples must be at least 1, got {n}")
            rng = torch.Generator().manual_seed(int(params.get("seed", 0)))
            z = torch.randn(n, latent_dim, generator=rng)
        else:
            z = torch.from_numpy(values.reshape(len(values), -1))
            if z.shape[1] != latent_dim:
                raise ValueError(f"latent vectors must have {latent_dim} components, got {z.shape[1]}")
        images = config_mod.from_model(decode(self.net, z, self.family), self.config.data)
        out = images.numpy().astype(np.float32)
        return out[:, 0] if out.shape[1] == 1 else out


mlflow.models.set_model(GeneratorModel())
