"""The paper's AU detector (BabyFlow 4.2, after Derkach et al.): spectral features of landmark patches
and one SVM per AU. Its evaluation on held-out identities, against the NNLS labels, is
`synth.analysis.au_evaluation`.

Features (eq. 3-4). Around each of the 19 central landmarks (`landmarks.CENTRAL_LANDMARKS`, the ears
excluded) a patch of the topology: the `patch_size` vertices nearest to the landmark along the mesh
graph (breadth-first rings, ties by Euclidean distance on the template), with the mesh edges between
them. Its graph Laplacian L_k = D - A (eq. 3: -1 per edge, the valence on the diagonal) is
eigen-decomposed once per topology; Phi_k holds the eigenvectors of the tau = 50 smallest eigenvalues.
A mesh's patch coordinates v_k (n_k, 3), centred on the patch mean, project to Omega_k = Phi_k^T v_k
(tau, 3) (eq. 4); the feature vector of a mesh is all 19 Omega_k, flattened (19 * tau * 3).

Classifiers: one binary `sklearn.svm.SVC` (LIBSVM, balanced class weights) per AU on the standardised
features, as the paper's 46 LIBSVM classifiers; an AU with a single class in the training set predicts
that class. The paper does not name the kernel; we use a linear one: the features are linear in the
vertices and an expression adds a near-linear deformation, while identity differences dominate RBF
distances (on 5 training / 2 held-out infants: macro F1 0.77 linear vs 0.24 RBF).
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.csgraph import laplacian
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from synth.atomic import atomic_write_bytes, atomic_write_text
from synth.errors import SynthError
from synth.labels.landmarks import CENTRAL_INDICES, LandmarkDefinition

log = logging.getLogger(__name__)

TAU = 50


@dataclass(frozen=True)
class SpectralPatches:
    """Landmark patches of one topology and their low-frequency Laplacian eigenvectors.

    vertex_ids: (K, P) int64 patch vertices per landmark; eigvecs: (K, P, tau) float64 (eq. 4's Phi);
    eigvals: (K, tau) the matching Laplacian eigenvalues; names: the K landmark names.
    """

    vertex_ids: np.ndarray
    eigvecs: np.ndarray
    eigvals: np.ndarray
    names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        k, _, tau = self.eigvecs.shape
        return k * tau * 3


def _adjacency(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    adj = ((adj + adj.T) > 0).astype(np.float64)
    return adj.tocsr()


def _graph_patch(adj: sp.csr_matrix, vertices: np.ndarray, seed: int, size: int) -> np.ndarray:
    """The `size` vertices nearest to `seed` by breadth-first rings, ties broken by Euclidean distance."""
    order = [seed]
    seen = {seed}
    ring = [seed]
    while len(order) < size and ring:
        nxt = sorted(
            {int(j) for i in ring for j in adj.indices[adj.indptr[i] : adj.indptr[i + 1]]} - seen,
            key=lambda j: float(np.linalg.norm(vertices[j] - vertices[seed])),
        )
        seen.update(nxt)
        order.extend(nxt)
        ring = nxt
    if len(order) < size:
        raise ValueError(f"the component of vertex {seed} has only {len(order)} vertices, need {size}")
    return np.array(order[:size], dtype=np.int64)


def build_patches(
    vertices: np.ndarray,
    faces: np.ndarray,
    definition: LandmarkDefinition,
    patch_size: int = 150,
    tau: int = TAU,
    landmark_indices: tuple[int, ...] = CENTRAL_INDICES,
) -> SpectralPatches:
    """Patches around the landmarks (default: the 19 central ones) of a template (N, 3) / faces (F, 3)."""
    if tau > patch_size:
        raise ValueError(f"tau={tau} eigenvectors need patches of at least tau vertices, got {patch_size}")
    adj = _adjacency(np.asarray(faces), len(vertices))
    ids, vecs, vals = [], [], []
    for k in landmark_indices:
        seed = int(definition.main_vertices[k])
        patch = _graph_patch(adj, vertices, seed, patch_size)
        lap = laplacian(adj[patch][:, patch]).toarray()  # eq. 3: valence on the diagonal, -1 per edge
        w, v = scipy.linalg.eigh(lap, subset_by_index=[0, tau - 1])  # the tau smallest
        ids.append(patch)
        vecs.append(v)
        vals.append(w)
    return SpectralPatches(
        vertex_ids=np.stack(ids),
        eigvecs=np.stack(vecs),
        eigvals=np.stack(vals),
        names=tuple(definition.names[k] for k in landmark_indices),
    )


def spectral_features(vertices: np.ndarray, patches: SpectralPatches) -> np.ndarray:
    """Eq. 4 for every landmark patch: vertices (n, N, 3) -> features (n, K * tau * 3) float32."""
    v = np.asarray(vertices, dtype=np.float64)[:, patches.vertex_ids]  # (n, K, P, 3)
    v = v - v.mean(axis=2, keepdims=True)  # patch-centred: translation-free
    omega = np.einsum("kpt,nkpd->nktd", patches.eigvecs, v)  # (n, K, tau, 3)
    return omega.reshape(len(v), -1).astype(np.float32)


class AuDetector:
    """One SVM per AU on standardised spectral features (the paper's 46 LIBSVM classifiers).

    kernel, c, gamma: `sklearn.svm.SVC` settings (default: linear kernel, C = 1). A linear detector keeps
    each SVM in its primal form w . x + b (weights (A, D), bias (A,)), which is what `MeshAuDetector`
    saves; other kernels keep the fitted `SVC`s and cannot be saved.
    """

    def __init__(self, kernel: str = "linear", c: float = 1.0, gamma: str | float = "scale") -> None:
        self.kernel = kernel
        self.c = c
        self.gamma = gamma
        self.scaler = StandardScaler()
        self.models: list[SVC | bool] = []
        self.weights: np.ndarray | None = None  # (A, D) float64, linear kernel only
        self.bias: np.ndarray | None = None  # (A,) float64

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "AuDetector":
        """features (n, D), labels (n, A) bool (AU present)."""
        x = self.scaler.fit_transform(features)
        linear = self.kernel == "linear"
        # The linear kernel is computed once and shared by the 46 SVMs (LIBSVM would recompute it per SVM).
        gram = x @ x.T if linear else x
        self.models = []
        for a in range(labels.shape[1]):
            y = labels[:, a].astype(bool)
            if y.all() or not y.any():
                self.models.append(bool(y[0]))  # one class only: predict it
                continue
            svc = SVC(
                kernel="precomputed" if linear else self.kernel,
                C=self.c,
                gamma=self.gamma,
                class_weight="balanced",
            )
            self.models.append(svc.fit(gram, y))
        if linear:
            # decision(x) = sum_i alpha_i y_i <x_i, x> + b = <w, x> + b with w = dual_coef @ support vectors
            self.weights = np.zeros((len(self.models), x.shape[1]))
            self.bias = np.zeros(len(self.models))
            for a, model in enumerate(self.models):
                if isinstance(model, bool):
                    self.bias[a] = 1.0 if model else -1.0
                else:
                    self.weights[a] = model.dual_coef_[0] @ x[model.support_]
                    self.bias[a] = model.intercept_[0]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """features (n, D) -> (n, A) bool AU presence."""
        x = self.scaler.transform(features)
        if self.weights is not None and self.bias is not None:
            return x @ self.weights.T + self.bias > 0
        out = np.zeros((len(x), len(self.models)), dtype=bool)
        for a, model in enumerate(self.models):
            out[:, a] = model if isinstance(model, bool) else model.predict(x).astype(bool)
        return out


DETECTOR_FORMAT = "synth-au-detector"
DETECTOR_VERSION = 1
_DETECTOR_ARRAYS = "detector.safetensors"
_DETECTOR_META = "detector.json"


@dataclass(frozen=True)
class MeshAuDetector:
    """A trained linear AU detector with its patches: meshes of one topology in, AU presence out.

    Saved as `detector.json` + `detector.safetensors` (patches, scaler, primal SVM weights), so labelling
    scans later needs neither the training data nor a pickle.
    """

    patches: SpectralPatches
    detector: AuDetector
    au_names: tuple[str, ...]
    n_vertices: int

    def predict(self, vertices: np.ndarray) -> np.ndarray:
        """vertices (n, N, 3) in the training topology (metres, model frame) -> (n, A) bool."""
        vertices = np.asarray(vertices)
        if vertices.ndim != 3 or vertices.shape[1:] != (self.n_vertices, 3):
            raise SynthError(
                f"AU detector: meshes must be (n, {self.n_vertices}, 3) in its topology, got {vertices.shape}"
            )
        return self.detector.predict(spectral_features(vertices, self.patches))

    def save(self, directory: str | Path) -> Path:
        """Write the detector into `directory` (arrays first, the JSON last; each file atomically)."""
        det = self.detector
        if det.weights is None or det.bias is None:
            raise SynthError(
                f"AU detector: only a fitted linear detector can be saved (kernel {det.kernel!r})"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "patch_vertex_ids": self.patches.vertex_ids,
            "patch_eigvecs": self.patches.eigvecs,
            "patch_eigvals": self.patches.eigvals,
            "scaler_mean": det.scaler.mean_,
            "scaler_scale": det.scaler.scale_,
            "weights": det.weights,
            "bias": det.bias,
        }
        data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        atomic_write_bytes(directory / _DETECTOR_ARRAYS, data)
        meta = {
            "format": DETECTOR_FORMAT,
            "format_version": DETECTOR_VERSION,
            "au_names": list(self.au_names),
            "landmarks": list(self.patches.names),
            "n_vertices": self.n_vertices,
            "c": det.c,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        atomic_write_text(directory / _DETECTOR_META, json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "MeshAuDetector":
        """Read a directory written by `save`; refuses missing, foreign or altered files."""
        directory = Path(directory)
        meta_path, array_path = directory / _DETECTOR_META, directory / _DETECTOR_ARRAYS
        if not meta_path.is_file() or not array_path.is_file():
            raise SynthError(
                f"{directory} is not a saved AU detector (needs {_DETECTOR_META} + {_DETECTOR_ARRAYS})"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise SynthError(f"{meta_path} is not valid JSON ({err})") from None
        if meta.get("format") != DETECTOR_FORMAT or meta.get("format_version") != DETECTOR_VERSION:
            raise SynthError(
                f"{meta_path} is not a synth AU detector of format version {DETECTOR_VERSION} "
                f"(format {meta.get('format')!r}, version {meta.get('format_version')!r})"
            )
        data = array_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise SynthError(f"{array_path} does not match the checksum in {meta_path}: re-save the detector")
        arrays = safetensors.numpy.load(data)
        det = AuDetector(kernel="linear", c=float(meta["c"]))
        det.scaler.mean_, det.scaler.scale_ = arrays["scaler_mean"], arrays["scaler_scale"]
        det.scaler.var_ = det.scaler.scale_**2
        det.scaler.n_features_in_ = len(det.scaler.mean_)
        det.weights, det.bias = arrays["weights"], arrays["bias"]
        patches = SpectralPatches(
            vertex_ids=arrays["patch_vertex_ids"],
            eigvecs=arrays["patch_eigvecs"],
            eigvals=arrays["patch_eigvals"],
            names=tuple(meta["landmarks"]),
        )
        return cls(patches, det, tuple(meta["au_names"]), int(meta["n_vertices"]))
