"""From user data to the model's input space, and back; the feature schema and its checks.

Tables: numeric columns are median-imputed and standardised, a missing-value indicator is
added for every numeric column that had missing values at fit, and categorical columns are
one-hot encoded with one extra slot for categories never seen at fit. The statistics come from
a scikit-learn ``ColumnTransformer`` fitted on the training frame. The fitted state is then kept
as plain numbers (medians, means, scales, category lists) and applied with NumPy: it is saved as
JSON, so a model file cannot run code when loaded and reads the same under any scikit-learn
version. ``tests/test_preprocess.py`` checks that both give the same matrix.

Images: ``image_preprocess.ImagePreprocessor``. Both answer the detector with the same
methods (``transform_rows``, ``transform_blocks``, ``scoring_blocks``, ``input_fingerprint``,
``left_out_columns``, ``as_one``, ``from_model_space``, ``image_shape``), so the estimator
does not ask which one it holds. Column conversions, checks and schema records: ``columns``.

Every check raises ``ValueError`` with a message that names the column and example rows.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from vae_core.data.columns import (
    MIN_FIT_ROWS,
    ColumnSpec,
    as_frame,
    check_scaled,
    is_numeric,
    numeric_strings,
    point_mass,
    rows_named,
    to_category,
    to_numeric,
)
from vae_core.data.image_preprocess import ImagePreprocessor
from vae_core.data.ingest import check_column_names, numeric_text_message, text_among_numbers
from vae_core.data.input_stats import fingerprint
from vae_core.network.model import FeatureLayout

_TABLE_BLOCK = 1 << 16  # table rows preprocessed at a time when scoring


class TabularPreprocessor:
    """Fitted mapping of a DataFrame to the model input; JSON-serialisable.

    Parameters
    ----------
    likelihood : "gaussian" (numeric columns standardised, Gaussian in the model) or
        "bernoulli" (numeric columns must lie in [0, 1] and are used as given).
    scaling : "standard" (mean and standard deviation) or "robust" (median and the
        interquartile range / 1.349, the standard deviation of a normal with that IQR; the
        standard deviation where the IQR is 0). Robust statistics are not inflated by the
        anomalies in the training data. Either is affine, so its log-Jacobian is exact.
    point_mass_share : a numeric column whose most frequent value is held by at least this
        share of the training rows (zeros of a count or an amount, a reading stuck at a
        bound) gets a point mass there: an indicator "the value is v" (Bernoulli in the
        model) gates the Gaussian, which then models only the other values. A Gaussian
        alone would put a spike of unbounded density on v and reward every row that sits on
        it, anomalies included. None: no point masses.
    """

    def __init__(
        self,
        likelihood: str = "gaussian",
        scaling: str = "standard",
        point_mass_share: float | None = None,
    ):
        if scaling not in ("standard", "robust"):
            raise ValueError(f"scaling must be 'standard' or 'robust', got {scaling!r}")
        if point_mass_share is not None and not 0.0 < point_mass_share <= 1.0:
            raise ValueError(f"point_mass_share must be in (0, 1] or None, got {point_mass_share}")
        self.likelihood = likelihood
        self.scaling = scaling
        self.point_mass_share = point_mass_share
        self.columns: list[ColumnSpec] = []

    # ---- fit ---------------------------------------------------------------------------
    def fit(self, X) -> TabularPreprocessor:
        frame = as_frame(X)
        check_column_names(frame.columns, "the training data")
        if len(frame) < MIN_FIT_ROWS:
            raise ValueError(f"need at least {MIN_FIT_ROWS} rows to fit, got {len(frame)}")
        if frame.shape[1] == 0:
            raise ValueError("the training data has no feature columns")
        specs = [self._inspect(frame[c], str(c)) for c in frame.columns]
        numeric = [s.name for s in specs if s.kind == "numeric"]
        categorical = [s.name for s in specs if s.kind == "categorical"]
        if not numeric and not categorical:
            raise ValueError("every column is constant: there is nothing to learn")
        data = pd.DataFrame(
            {s.name: to_numeric(frame[s.name], s.name) for s in specs if s.kind == "numeric"}
            | {c: to_category(frame[c]) for c in categorical}
        )
        fitted = self._column_transformer(numeric, categorical).fit(data)
        self._read_statistics(fitted, specs, numeric, categorical)
        if self.scaling == "robust" and numeric and self.likelihood == "gaussian":
            imputed = fitted.named_transformers_["numeric"][0].transform(data[numeric])
            self._robust_statistics([s for s in specs if s.kind == "numeric"], imputed)
        if self.point_mass_share is not None and self.likelihood == "gaussian":
            for spec in specs:
                if spec.kind == "numeric":
                    spec.point_mass = point_mass(data[spec.name], self.point_mass_share)
        for spec in specs:
            if spec.kind == "numeric":
                check_scaled(spec, data[spec.name].to_numpy(), frame.index)
        self.columns = specs
        return self

    @staticmethod
    def _robust_statistics(numeric: list[ColumnSpec], imputed: np.ndarray) -> None:
        """Centre at the median, scale by IQR / 1.349 (the standard deviation where IQR = 0)."""
        q25, q50, q75 = np.percentile(imputed, [25, 50, 75], axis=0)
        iqr_sigma = (q75 - q25) / 1.349
        for j, spec in enumerate(numeric):
            spec.mean = float(q50[j])
            if iqr_sigma[j] > 0:
                spec.scale = float(iqr_sigma[j])

    def _inspect(self, s: pd.Series, name: str) -> ColumnSpec:
        dtype = str(s.dtype)
        typos = text_among_numbers(s)
        if typos is not None:
            raise ValueError(numeric_text_message(name, s[typos], rows_named(s.index, typos)))
        if is_numeric(s) or (self.likelihood == "gaussian" and numeric_strings(s)):
            values = to_numeric(s, name)
            finite = values[~np.isnan(values)]
            if finite.size == 0:
                raise ValueError(f"column {name!r} is entirely missing (NaN) in the training data")
            if self.likelihood == "bernoulli" and (finite.min() < 0 or finite.max() > 1):
                bad = (values < 0) | (values > 1)
                raise ValueError(
                    f"likelihood='bernoulli' needs values in [0, 1]; column {name!r} has "
                    f"values outside at {rows_named(s.index, bad)}"
                )
            if np.all(finite == finite[0]) and finite.size == values.size:
                warnings.warn(
                    f"column {name!r} is constant ({finite[0]!r}) in the training data; it "
                    "carries no information and is left out of the model",
                    UserWarning,
                    stacklevel=3,
                )
                return ColumnSpec(name, "constant", dtype, constant_value=float(finite[0]))
            return ColumnSpec(name, "numeric", dtype)
        if s.nunique() == len(s) > 2 * MIN_FIT_ROWS:
            warnings.warn(
                f"column {name!r} has a different value in every row: it looks like an id; "
                "pass it as an id column so it is carried through rather than modelled",
                UserWarning,
                stacklevel=3,
            )
        return ColumnSpec(name, "categorical", dtype)

    def _column_transformer(self, numeric: list[str], categorical: list[str]):
        scale = StandardScaler() if self.likelihood == "gaussian" else "passthrough"
        return ColumnTransformer(
            [
                ("numeric", make_pipeline(SimpleImputer(strategy="median"), scale), numeric),
                ("missing", MissingIndicator(features="missing-only"), numeric),
                ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
            ],
            sparse_threshold=0.0,
        )

    def _read_statistics(self, ct, specs, numeric, categorical) -> None:
        by_name = {s.name: s for s in specs}
        num_pipe = ct.named_transformers_["numeric"]
        medians = num_pipe[0].statistics_ if numeric else []
        scaler = num_pipe[-1] if self.likelihood == "gaussian" else None
        for i, name in enumerate(numeric):
            spec = by_name[name]
            spec.median = float(medians[i])
            spec.mean = float(scaler.mean_[i]) if scaler is not None else 0.0
            spec.scale = float(scaler.scale_[i]) if scaler is not None else 1.0
        if numeric:
            for i in ct.named_transformers_["missing"].features_:
                by_name[numeric[i]].missing_indicator = True
        if categorical:
            encoder = ct.named_transformers_["categorical"]
            for name, cats in zip(categorical, encoder.categories_, strict=True):
                by_name[name].categories = [str(c) for c in cats]

    # ---- the fitted mapping ------------------------------------------------------------
    def _of_kind(self, kind: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.kind == kind]

    @property
    def feature_names(self) -> list[str]:
        """The input columns the model was fitted on, in order."""
        return [c.name for c in self.columns]

    @property
    def layout(self) -> FeatureLayout:
        numeric, n_missing = (
            self._of_kind("numeric"),
            sum(c.missing_indicator for c in self.columns),
        )
        # Each categorical block has one slot more than the categories seen at fit: unseen
        # categories at scoring land there, and the model has learnt they are improbable.
        sizes = tuple(len(c.categories) + 1 for c in self._of_kind("categorical"))
        if self.likelihood != "gaussian":
            return FeatureLayout(0, len(numeric) + n_missing, sizes)
        if not self._gated:  # a model fitted before gates existed keeps its layout
            return FeatureLayout(len(numeric), n_missing, sizes)
        gates = [j for j, c in enumerate(numeric) if c.missing_indicator]
        gates += [j for j, c in enumerate(numeric) if c.point_mass is not None]
        return FeatureLayout(len(numeric), len(gates), sizes, tuple(gates))

    @property
    def _gated(self) -> bool:
        """Indicators gate their Gaussian column (missing values left out of the likelihood,
        point masses): every model fitted with ``point_mass_share`` set."""
        return self.likelihood == "gaussian" and self.point_mass_share is not None

    @property
    def _point_masses(self) -> list[ColumnSpec]:
        return [c for c in self._of_kind("numeric") if c.point_mass is not None]

    @property
    def term_columns(self) -> list[str]:
        """The original column behind each likelihood term, in the layout's term order."""
        numeric = [c.name for c in self._of_kind("numeric")]
        missing = [c.name for c in self._of_kind("numeric") if c.missing_indicator]
        masses = [c.name for c in self._point_masses]
        return numeric + missing + masses + [c.name for c in self._of_kind("categorical")]

    @property
    def term_log_scale(self) -> np.ndarray:
        """log |dx/du| per term: the scaling's log-Jacobian, so densities are in data units.

        With u = (x - mean) / scale, log p(x) = log p(u) - log scale for each Gaussian column;
        discrete terms (indicators, categories, Bernoulli) are probabilities and get 0.
        """
        out = np.zeros(len(self.term_columns))
        if self.likelihood == "gaussian":
            scales = [c.scale for c in self._of_kind("numeric")]
            out[: len(scales)] = np.log(scales)
        return out

    def transform(self, X) -> np.ndarray:
        """Model input (n, layout.input_dim) float32; raises ValueError naming column and rows,
        among them a NaN in a numeric column that had no missing values at fit."""
        return self._transform(X, gaps=False)[0]

    def transform_with_gaps(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(u, unobserved)``: the model input, and (n, n_gaussian) bool marking NaN cells of
        numeric columns that had no missing values at fit. Those cells get the training median
        for the encoder, and the likelihood leaves them out. Gaussian likelihood only:
        otherwise such a NaN raises as in ``transform`` and ``unobserved`` is all False."""
        return self._transform(X, gaps=self.likelihood == "gaussian")

    def unobserved_cells(self, X) -> tuple[list[str], np.ndarray]:
        """(names, (n, len(names)) bool) of the numeric columns without a missing-value
        indicator and where they are NaN: the cells ``transform_with_gaps`` leaves out, without
        building the rest of the model input."""
        frame = self.check(X)
        specs = [c for c in self._of_kind("numeric") if not c.missing_indicator]
        if self.likelihood != "gaussian" or not specs:
            return [], np.zeros((len(frame), 0), bool)
        mask = np.stack([np.isnan(to_numeric(frame[c.name], c.name)) for c in specs], 1)
        return [c.name for c in specs], mask

    def _transform(self, X, gaps: bool) -> tuple[np.ndarray, np.ndarray]:
        frame = self.check(X)
        numeric = self._of_kind("numeric")
        blocks, indicators, masses, unobserved = [], [], [], []
        for c in numeric:
            values = to_numeric(frame[c.name], c.name)
            missing = np.isnan(values)
            if missing.any() and not c.missing_indicator and not gaps:
                raise ValueError(
                    f"column {c.name!r} had no missing values at fit, so the model cannot score "
                    f"missing values; NaN at {rows_named(frame.index, missing)}"
                )
            unobserved.append(missing & (not c.missing_indicator))
            blocks.append((np.where(missing, c.median, values) - c.mean) / c.scale)
            if c.missing_indicator:
                indicators.append(missing.astype("float64"))
            if c.point_mass is not None:
                masses.append((values == c.point_mass).astype("float64"))
        u = self._assemble(frame, blocks + indicators + masses)
        if not gaps or not unobserved:
            return u, np.zeros((len(u), len(numeric) if gaps else 0), bool)
        return u, np.stack(unobserved, 1)

    def _assemble(self, frame: pd.DataFrame, out: list[np.ndarray]) -> np.ndarray:
        out = out + [self._one_hot(frame[c.name], c) for c in self._categorical]
        matrix = [b[:, None] if b.ndim == 1 else b for b in out]
        if not matrix:
            return np.zeros((len(frame), 0), dtype="float32")
        return np.hstack(matrix).astype("float32")

    @property
    def _categorical(self) -> list[ColumnSpec]:
        return self._of_kind("categorical")

    @staticmethod
    def _one_hot(s: pd.Series, c: ColumnSpec) -> np.ndarray:
        lookup = {cat: i for i, cat in enumerate(c.categories)}
        codes = np.array([lookup.get(v, len(c.categories)) for v in to_category(s)], dtype=int)
        return np.eye(len(c.categories) + 1)[codes]

    def check(self, X) -> pd.DataFrame:
        """The frame restricted to the fitted columns, after the schema checks."""
        frame = as_frame(X, self.feature_names if not isinstance(X, pd.DataFrame) else None)
        if len(frame) == 0:
            raise ValueError("the input has no rows")
        missing = [n for n in self.feature_names if n not in frame.columns]
        if missing:
            raise ValueError(
                f"missing column(s) {', '.join(repr(m) for m in missing)} "
                f"(the model was fitted on {len(self.feature_names)} columns)"
            )
        repeated = [n for n in self.feature_names if (frame.columns == n).sum() > 1]
        if repeated:
            raise ValueError(
                f"column(s) {', '.join(repr(n) for n in repeated)} appear more than once in "
                "the input; give each column its own name"
            )
        return frame[self.feature_names]

    def inverse_transform(
        self, u: np.ndarray, rng: np.random.Generator | None, most_probable: bool = False
    ) -> pd.DataFrame:
        """Rows in the original feature space from model-space values u (n, input_dim).

        Categorical blocks hold probabilities and are sampled with ``rng``, or, with
        ``most_probable=True``, give their most probable label; a missing indicator above 0.5
        blanks its value; constant columns get their constant.
        """
        numeric, out, pos = self._of_kind("numeric"), {}, 0
        for c in numeric:
            out[c.name] = u[:, pos] * c.scale + c.mean
            pos += 1
        for c in numeric:
            if c.missing_indicator:
                out[c.name] = np.where(u[:, pos] > 0.5, np.nan, out[c.name])
                pos += 1
        for c in self._point_masses:
            out[c.name] = np.where(u[:, pos] > 0.5, c.point_mass, out[c.name])
            pos += 1
        for c in self._categorical:
            probs = u[:, pos : pos + len(c.categories) + 1][:, :-1]  # never emit "unseen"
            probs = probs / probs.sum(1, keepdims=True)
            if most_probable:
                picks = probs.argmax(1)
            else:
                picks = (probs.cumsum(1) > rng.random((len(u), 1))).argmax(1)
            out[c.name] = np.array(c.categories, dtype=object)[picks]
            pos += len(c.categories) + 1
        for c in self._of_kind("constant"):
            out[c.name] = np.full(len(u), c.constant_value)
        return pd.DataFrame({name: out[name] for name in self.feature_names})

    # ---- what the detector asks of its preprocessor (as ``ImagePreprocessor``) -------------
    image_shape = None  # a table is not an image (``ImagePreprocessor.image_shape``)

    def transform_rows(self, X, rows=None) -> np.ndarray:
        """``transform`` of the rows at positions ``rows`` of X (default all)."""
        if rows is not None:
            X = X.iloc[rows] if isinstance(X, pd.DataFrame) else np.asarray(X)[rows]
        return self.transform(X)

    def transform_blocks(self, X):
        """``transform`` of all of X, as one block (images come in several)."""
        yield self.transform(X)

    def scoring_blocks(self, X, chunk: int, marginalise: bool):
        """(model input, observed mask or None) of X in consecutive blocks of whole chunks of
        ``chunk`` rows, about ``_TABLE_BLOCK`` rows: the preprocessing's copies are of one
        block, not of the whole table (a row's input does not depend on its block).

        marginalise : NaN cells of numeric columns without a missing-value indicator are
            marked unobserved, 0 in the mask (``transform_with_gaps``); else they raise, as in
            ``transform``. The mask is None where every cell is observed.
        """
        block = chunk * max(1, _TABLE_BLOCK // chunk)
        if len(X) <= block:
            yield self._scoring_input(X, marginalise)
            return
        rows = X.iloc if isinstance(X, pd.DataFrame) else X
        for start in range(0, len(X), block):
            yield self._scoring_input(rows[start : start + block], marginalise)

    def _scoring_input(self, X, marginalise: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if not marginalise:
            return self.transform(X), None
        u, unobserved = self.transform_with_gaps(X)
        return u, ((~unobserved).astype("float32") if unobserved.any() else None)

    def input_fingerprint(self, X) -> str:
        """``input_stats.fingerprint`` of X's model input."""
        return fingerprint(self.transform(X))

    def left_out_columns(self, X, index=None) -> pd.Series:
        """Per row, labelled ``index`` (default 0..n-1), the numeric columns whose missing
        value the likelihood leaves out (``unobserved_cells``), joined by ";" ("" for a
        complete row)."""
        names, gaps = self.unobserved_cells(X)
        names = np.asarray(names, dtype=object)
        rows = np.full(len(gaps), "", dtype=object)
        for i in np.flatnonzero(gaps.any(axis=1)):  # rows with a gap only
            rows[i] = ";".join(names[np.flatnonzero(gaps[i])])
        return pd.Series(rows, index=index, dtype=object)

    def as_one(self, v, name: str) -> pd.DataFrame:
        """``v``, one row (a Series, a one-row DataFrame or a sequence of values), as a
        one-row DataFrame; ValueError naming ``name`` otherwise."""
        if isinstance(v, pd.Series):
            v = v.to_frame().T
        frame = v if isinstance(v, pd.DataFrame) else pd.DataFrame(np.atleast_2d(v))
        if len(frame) != 1:
            raise ValueError(f"{name}: expected one row, got {len(frame)}")
        return frame

    def from_model_space(self, u: np.ndarray, like=None, index=None) -> pd.DataFrame:
        """Decoder means ``u`` (n, input_dim) in the original columns (``inverse_transform``,
        each category at its most probable label), rows labelled ``index`` (default 0..n-1).
        ``like`` is for images' shape."""
        frame = self.inverse_transform(u, None, most_probable=True)
        if index is not None:
            frame.index = index
        return frame

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "kind": "tabular",
            "likelihood": self.likelihood,
            "scaling": self.scaling,
            "point_mass_share": self.point_mass_share,
            "columns": [asdict(c) for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: dict) -> TabularPreprocessor:
        pre = cls(d["likelihood"], d.get("scaling", "standard"), d.get("point_mass_share"))
        pre.columns = [ColumnSpec(**c) for c in d["columns"]]
        return pre


def preprocessor_from_dict(d: dict):
    return {"tabular": TabularPreprocessor, "image": ImagePreprocessor}[d["kind"]].from_dict(d)
