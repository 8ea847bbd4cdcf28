"""The tracking layer: MLflow runs, the packaged model and the registry. It logs what the
pipeline hands it; only this package and ``vae_core/tracking/mlflow_model.py`` import MLflow.

One job a module:

- ``store``: where the store is (``TrackingTarget``), whether it answers, the wrapper of every
  call (bounded retries, ``TrackingUnavailable`` naming the URI).
- ``provenance``: fingerprints of the data, the code version, the settings a run records.
- ``training_runs``: a training run, from its parameters to its packaged model.
- ``packaging``: the detector as an MLflow pyfunc model (models-from-code), and back.
- ``registration``: versions, the ``challenger`` and ``champion`` aliases, promotion.
- ``scoring_runs``: registered models loaded for scoring, and scoring runs.
- ``access``: credentials from the environment only, a refused call as one line
  (``AccessRefused``); ``users``: the users and permissions of a server with authentication.

Every function takes plain arguments (a ``TrackingTarget``, config sections, a detector, a
dataset) so that a Prefect task is one call; nothing here runs at import time.
``vae_core.tracking.registry`` re-exports the public names. The life of a model, in calls::

    with training_run(target, cfg, data_source) as run_id:     # params, RUNNING; FAILED if
        outcome = training.train_and_evaluate(                  #   the block raises
            data, cfg, out, callbacks=[epoch_logger(target, run_id)])   # per-epoch metrics
        log_training_run(target, run_id, cfg, data, outcome, data_source)  # the rest; ends it
    register_challenger(target, run_id)            # new version, alias @challenger; a rerun
                                                   #   finishes or replaces an unfinished one
    promote_challenger(target, cfg.promotion,                # scores nothing itself:
        promotion.measure_on(*pipeline.held_out(data, cfg.split)))   #   loads, hands, records
    load_champion(target)                          # models:/NAME@champion -> VAEDetector
    log_batch_scoring(target, champion.ref, batch.score_batch(...), data_source)
    log_scoring_run(target, champion.ref, scores, scores_path, threshold)   # in-memory scores

Registry aliases only (``champion``: what scheduled scoring loads; ``challenger``: the newest
version awaiting review), never the deprecated stages. Every promotion decision, including a
forced one, is written on the version as its ``promotion`` tag and a line in its description.
A version carries at most ``MAX_VERSION_TAGS`` tags (``version_tags``), so that the versions
table of the MLflow UI stays readable.
"""
