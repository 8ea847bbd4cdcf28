"""The packaged model: an MLflow ``PythonModel`` over a saved VAEDetector (models-from-code).

``registry.log_packaged_model`` logs this file as the model's code (MLflow's "models from code":
the file is executed at load time, nothing of ours is pickled), the ``vae_core`` package as
``code_paths`` and the detector folder (``weights.pt`` + ``model.json``) as the artifact
``detector``. Loading runs ``load_context``, which reads the detector with
``VAEDetector.load`` (``torch.load(weights_only=True)`` and JSON), so a model file cannot run
code beyond the package shipped with it.

Input: a DataFrame of raw feature columns (as in training; extra columns are ignored).
Output: one row per input row, in order: ``anomaly_score`` (threshold units, higher = more
anomalous), ``is_anomaly`` (score > threshold), ``anomaly_probability`` and the
``top_feature_<k>`` / ``top_feature_<k>_nats`` columns that contributed most (see
``kinds.table_scores.score_table``).

A detector fitted on images takes a DataFrame with a ``path`` column (image files, read at
the training size and colour mode; ``on_size_mismatch`` as configured at training) or an
``image`` column (per row an (H, W) or (C, H, W) array of 0..255 integers) and returns
``path`` (for path input), ``anomaly_score``, ``is_anomaly`` and ``anomaly_probability``
(see ``kinds.image_scores.score_image_input``; ``kinds.choice.kind_of_model`` picks the
kind, whose ``score_input`` and ``latent_frame`` answer).

``predict(df, params={"output": "latent"})`` returns instead the latent coordinates
``z0`` .. ``z{k-1}`` (the posterior means of q(z|x), ``VAEDetector.transform``) per input row,
with ``path`` for path input; ``params={"output": "scores"}`` is the default. The parameter is
declared in the model's signature (MLflow predict params), so ``mlflow models serve`` takes
it in the request's ``params``.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from vae_core.kinds.protocol import PREDICT_OUTPUTS


class VAEAnomalyModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict(df)`` scores rows exactly as ``score_table`` does."""

    def load_context(self, context) -> None:
        from vae_core.estimator.detector import VAEDetector

        self.detector = VAEDetector.load(context.artifacts["detector"])
        config = context.model_config or {}
        # written by every training run (TrainOutcome.examples["model_config"])
        self.top_features = int(config["top_features"])
        self.on_size_mismatch = str(config.get("on_size_mismatch", "reject"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from vae_core.kinds.choice import kind_of_model

        output = (params or {}).get("output", "scores")
        if output not in PREDICT_OUTPUTS:
            raise ValueError(
                f"params output must be one of {', '.join(PREDICT_OUTPUTS)}, got {output!r}"
            )
        kind, mismatch = kind_of_model(self.detector), self.on_size_mismatch
        if output == "latent":
            return kind.latent_frame(self.detector, model_input, on_size_mismatch=mismatch)
        return kind.score_input(
            self.detector, model_input, top_features=self.top_features, on_size_mismatch=mismatch
        )


# The models-from-code entry point: MLflow executes this file when it loads the logged model.
# It only names the model object; nothing is read or connected here.
mlflow.models.set_model(VAEAnomalyModel())
