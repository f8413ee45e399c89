"""The white-cell classifier: an ONNX model run by onnxruntime.

The analysis loads its model from a signed bundle ``NAME-VERSION.hdmodel``
(:mod:`inference.bundle`), verified (signature, hashes) before onnxruntime
sees a byte of it; the shipped bundle lives in ``inference/models/``. Beside
it are the training artefacts the bundle was made from: ``NAME.onnx`` (INT8)
with its model card ``NAME.card.json`` and the FP32 twin ``NAME.fp32.onnx``;
an engineer may run a loose ``.onnx`` with its card (``--model``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from holography.errors import HoloDiffError

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: the INT8 training artefact the shipped bundle was signed from (card beside it)
ONNX_MODEL = MODELS_DIR / "wbc5.onnx"


def shipped_bundle(name: str = "wbc5") -> Path:
    """The newest ``NAME-VERSION.hdmodel`` shipped in ``inference/models``."""
    def version(p: Path) -> tuple[int, ...]:
        v = p.name.removeprefix(f"{name}-").removesuffix(".hdmodel")
        return tuple(int(x) if x.isdigit() else -1 for x in v.split("."))

    found = sorted(MODELS_DIR.glob(f"{name}-*.hdmodel"), key=version)
    return found[-1] if found else MODELS_DIR / f"{name}-missing.hdmodel"


#: the model the analysis uses unless told otherwise: the shipped signed bundle
DEFAULT_MODEL = shipped_bundle()


class ModelError(HoloDiffError):
    """A classifier model is missing, unreadable or does not fit the analysis."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the result says about the model that made it."""

    name: str
    version: str
    sha256: str
    path: str
    classes: tuple[str, ...]


def _card_path(model: Path) -> Path:
    stem = model.name.removesuffix(".onnx").removesuffix(".fp32")
    return model.with_name(f"{stem}.card.json")


class Classifier:
    """An onnxruntime session of one model with its card.

    Parameters
    ----------
    path : path-like
        A signed ``.hdmodel`` bundle (verified against the trust store), or an
        ``.onnx`` file with its card beside it.
    threads : int
        Intra-op threads of the session.
    """

    def __init__(self, path: str | Path = DEFAULT_MODEL, *, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"classifier model {self.path} not found; reinstall HoloDiff or "
                             "install a model bundle")
        if self.path.suffix == ".hdmodel":
            from inference.bundle import read_bundle

            bundle = read_bundle(self.path)
            data = bundle.files["model.onnx"]
            card_text, card = bundle.files["card.json"].decode(), self.path / "card.json"
        else:
            card = _card_path(self.path)
            data = card_text = None
        try:
            self.card = json.loads(card_text if card_text is not None else card.read_text())
            self.classes = tuple(self.card["classes"])
            self.channels = int(self.card["input"]["channels"])
            self.size = int(self.card["input"]["size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"model card {card} is missing or invalid ({exc}); reinstall the "
                             "model") from None
        counts = self.card.get("training", {}).get("class_counts")
        self.train_priors = (np.array([float(counts[c]) for c in self.classes])
                             if counts and all(c in counts for c in self.classes) else None)
        if data is None:
            data = self.path.read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle threads sleep instead of spinning: the analysis runs its own threads beside them
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"classifier model {self.path} cannot be loaded ({exc}); "
                             "reinstall the model") from None
        self.info = ModelInfo(name=self.card.get("name", self.path.stem),
                              version=str(self.card.get("version", "0")),
                              sha256=hashlib.sha256(data).hexdigest(), path=str(self.path),
                              classes=self.classes)

    @property
    def enhanced_crops(self) -> bool:
        """Whether the model was trained on the per-cell enhanced crops.

        Card ``input.crops`` names pixel super-resolution and phase retrieval;
        otherwise (and on older cards) the crops are cut from the plain fields.
        """
        return "retrieval" in str(self.card.get("input", {}).get("crops", ""))

    @property
    def score_calibration(self) -> tuple[float, np.ndarray] | None:
        """The card's temperature and class biases of the scores (:func:`fit_score_calibration`)."""
        sc = self.card.get("score_calibration")
        if not sc:
            return None
        return float(sc["temperature"]), np.array(sc["bias"], np.float64)

    def __call__(self, crops: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, K) and volumes in fL (N,) of a crop stack.

        Where the card carries a score calibration (temperature and class biases
        fitted on validation crops), the probabilities are calibrated by it.
        """
        if crops.ndim == 4 and crops.shape[-1] > self.size and crops.shape[-1] == crops.shape[-2]:
            a = (crops.shape[-1] - self.size) // 2  # the model sees the crop's centre
            crops = crops[..., a:a + self.size, a:a + self.size]
        if crops.ndim != 4 or crops.shape[1:] != (self.channels, self.size, self.size):
            raise ModelError(f"crops of shape {crops.shape[1:]} do not fit model {self.info.name} "
                             f"({self.channels}, {self.size}, {self.size})")
        probs = np.zeros((len(crops), len(self.classes)), np.float32)
        vol = np.zeros(len(crops), np.float32)
        for i in range(0, len(crops), batch):
            p, v = self.session.run(None, {"crops": np.ascontiguousarray(crops[i:i + batch],
                                                                          np.float32)})
            probs[i:i + batch] = p
            vol[i:i + batch] = v
        sc = self.score_calibration
        if sc is not None:
            probs = calibrate_scores(probs, *sc)
        return probs, vol

    def classify_candidates(self, candidates: list, crops: np.ndarray) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """:meth:`__call__` on the crops of the candidates that are not ``faint``.

        Faint candidates (too faint for a white cell, never refocused: zero crops)
        get no call from the network: their rows are zero probabilities and NaN
        volume (``inference.result.call_cells`` rejects them).
        """
        n = len(candidates)
        probs = np.zeros((n, len(self.classes)), np.float32)
        vols = np.full(n, np.nan, np.float32)
        keep = np.flatnonzero([not c.faint for c in candidates])
        if len(keep):
            # the detection puts the faint candidates last: a view, not a copy, of the rest
            sel = crops[:len(keep)] if keep[-1] == len(keep) - 1 else crops[keep]
            probs[keep], vols[keep] = self(sel)
        return probs, vols


def calibrate_scores(probs: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    """``softmax(log p / T + b)``: bias-corrected temperature scaling of class probabilities."""
    z = np.log(np.clip(np.asarray(probs, np.float64), 1e-7, None)) / temperature + bias
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return (q / q.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_score_calibration(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Temperature and class biases that make the probabilities calibrated on labelled crops.

    Bias-corrected temperature scaling (Alexandari, Kundaje & Shrikumar, "Maximum
    likelihood with bias-corrected calibration is hard-to-beat at label shift
    adaptation", ICML 2020): the prior-shift EM of the analysis assumes
    calibrated posteriors, which a network trained with a cross-entropy rarely
    gives. Fitted by maximum likelihood on validation crops (training conditions,
    captures the network did not see).
    """
    from scipy.optimize import minimize

    z = np.log(np.clip(np.asarray(probs, np.float64), 1e-7, None))
    y = np.asarray(labels, int)
    k = z.shape[1]

    def nll(theta):
        t = np.exp(theta[0])
        a = z / t + theta[1:]
        a -= a.max(axis=1, keepdims=True)
        lse = np.log(np.exp(a).sum(axis=1))
        return float(np.mean(lse - a[np.arange(len(y)), y]))

    # the temperature is bounded to 0.25-4: a network that needs more is not one to calibrate
    bounds = [(np.log(0.25), np.log(4.0))] + [(-5.0, 5.0)] * k
    best = minimize(nll, np.zeros(k + 1), method="L-BFGS-B", bounds=bounds)
    b = best.x[1:] - best.x[1:].mean()
    return float(np.exp(best.x[0])), b
