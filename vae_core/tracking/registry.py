"""MLflow for the pipeline, in one namespace: the public names of ``vae_core.tracking``
(store, provenance, training runs, the packaged model, registration and promotion, scoring
runs), re-exported so that callers write ``registry.log_training_run(...)``. The code and
the life of a model in calls are in ``vae_core/tracking/``.
"""

from vae_core.tracking.access import AccessRefused
from vae_core.tracking.feedback_runs import (
    FEEDBACK_RUN_TAG,
    read_feedback,
    record_feedback,
    reviewed_verdicts,
    scored_rows,
)
from vae_core.tracking.packaging import (
    DETECTOR_ARTIFACT,
    RUNTIME_PACKAGES,
    log_packaged_model,
    pip_requirements,
)
from vae_core.tracking.provenance import (
    code_version,
    scoring_settings,
    setting_value,
    settings_params,
    source_digest,
    table_fingerprint,
)
from vae_core.tracking.registration import (
    FINGERPRINT_TAG,
    INCOMPLETE,
    MAX_VERSION_TAGS,
    PROMOTION_TAG,
    REGISTRATION_STATE,
    ModelVersionRef,
    add_review_section,
    champion_version,
    mark_recalibration,
    promote_challenger,
    register_challenger,
    training_data_of,
    version_tags,
)
from vae_core.tracking.scoring_runs import (
    RegisteredDetector,
    load_champion,
    load_registered,
    log_batch_scoring,
    log_scoring_run,
    parse_model_uri,
    score_distribution,
    scoring_dataset,
    scoring_run_note,
)
from vae_core.tracking.store import (
    NOTE_TAG,
    TrackingTarget,
    TrackingUnavailable,
    check_reachable,
    connect,
)
from vae_core.tracking.training_runs import (
    MODEL_URI_TAG,
    end_failed_run,
    epoch_logger,
    log_training_run,
    start_training_run,
    training_run,
)

__all__ = [
    "DETECTOR_ARTIFACT",
    "FEEDBACK_RUN_TAG",
    "FINGERPRINT_TAG",
    "INCOMPLETE",
    "MAX_VERSION_TAGS",
    "MODEL_URI_TAG",
    "NOTE_TAG",
    "PROMOTION_TAG",
    "REGISTRATION_STATE",
    "RUNTIME_PACKAGES",
    "AccessRefused",
    "ModelVersionRef",
    "RegisteredDetector",
    "TrackingTarget",
    "TrackingUnavailable",
    "add_review_section",
    "champion_version",
    "check_reachable",
    "code_version",
    "connect",
    "end_failed_run",
    "epoch_logger",
    "load_champion",
    "load_registered",
    "log_batch_scoring",
    "log_packaged_model",
    "log_scoring_run",
    "log_training_run",
    "mark_recalibration",
    "parse_model_uri",
    "pip_requirements",
    "promote_challenger",
    "read_feedback",
    "record_feedback",
    "register_challenger",
    "reviewed_verdicts",
    "score_distribution",
    "scored_rows",
    "scoring_dataset",
    "scoring_run_note",
    "scoring_settings",
    "setting_value",
    "settings_params",
    "source_digest",
    "start_training_run",
    "table_fingerprint",
    "training_data_of",
    "training_run",
    "version_tags",
]
