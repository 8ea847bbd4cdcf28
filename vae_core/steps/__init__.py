"""The pipeline's steps: plain functions on plain data that the command line and the
flows chain. The dataset interface and the one place the kind of data is decided
(``dataset``), splitting, fitting, calibration, evaluation, batch scoring with bounded
memory and atomic output, the latent space, the promotion gate as pure functions.
Nothing here imports Prefect or MLflow.

Layers: docs/architecture.md.
"""
