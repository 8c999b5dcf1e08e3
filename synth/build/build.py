"""Building a face model: source tensor -> HOSVD -> flows -> model directory (BabyFlow 4.3-4.4).

`build_model` reads top to bottom as the recipe. Models are cached under `$SYNTH_CACHE_DIR/models/<key>`
(default `~/.cache/synth/models/<key>`), the key being a hash of the build recipe
(`ModelConfig.build_key`), and every directory appears whole or not at all: the build writes into a
temporary sibling directory that is renamed into place at the end; what a killed build left there is
removed by the next build of the same key on the same host. `resolve_model` returns the directory of a
config (building it when absent), `default_model()` the loaded default infant model.
"""

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from synth import cpu
from synth.atomic import fsync_dir
from synth.build.config import ModelConfig, ModelSource, build_spec, config_from_spec
from synth.errors import SynthError
from synth.facemodel import bilinear
from synth.facemodel.flows import train_flow
from synth.facemodel.model import FaceModel
from synth.facemodel.tensor import FaceTensor
from synth.facemodel.topology import triangles_hash

if TYPE_CHECKING:
    from synth.sources.anny_source import AnnySourceConfig
from synth.seeding import Stage, seed_sequence, torch_generator

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """`$SYNTH_CACHE_DIR/models`, else `$XDG_CACHE_HOME/synth/models`, else `~/.cache/synth/models`."""
    if os.environ.get("SYNTH_CACHE_DIR"):
        return Path(os.environ["SYNTH_CACHE_DIR"]) / "models"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "synth" / "models"


def resolve_model(config: ModelConfig, progress: bool = True) -> Path:
    """The model directory of `config`: `config.path` when given (checked to exist), else the cached
    build of the recipe (built now, with progress bars, when absent)."""
    if config.path is not None:
        path = Path(config.path).expanduser()
        if not (path / "model.json").is_file():
            raise SynthError(
                f"model.path={config.path} is not a built model (no model.json); build one with "
                "`synth build-model model.out=DIR` or leave model.path unset to use the cached default"
            )
        return path
    return build_model(config, out_dir=config.out, progress=progress)


def default_model(progress: bool = True, device: str | torch.device = "cpu") -> FaceModel:
    """The default infant model (`model=anny_infant`), built into the user cache on first use."""
    return FaceModel.load(resolve_model(ModelConfig(), progress=progress), device)


def build_model(config: ModelConfig, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Build the model of `config` into `out_dir` (default: the cache) and return the directory.

    A directory already holding a model of the same recipe is returned as is; any other non-empty
    directory is refused.
    """
    if config.path is not None:
        raise SynthError(f"model.path={config.path} names an existing model; unset it to build one")
    target = Path(out_dir).expanduser() if out_dir is not None else cache_root() / config.build_key()
    if _is_built(target, config) and out_dir is None and _stale_triangulation(target, config):
        log.warning("cached face model %s uses a CPU-dependent triangulation; building it again", target)
        shutil.rmtree(target)
    if _is_built(target, config):
        log.info("face model %s is up to date", target)
        return target
    if target.exists() and any(target.iterdir()):
        raise SynthError(
            f"model output directory {target} exists and is not a model of this recipe; "
            "choose an empty or new directory (model.out=DIR) or delete it"
        )
    if cpu.can_pin() and not os.environ.get(PINNED_CHILD) and not cpu.pinned():
        return _build_in_pinned_process(config, target, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_building_prefix(target, os.getpid())))
    try:
        log.info("building face model into %s", target)
        model, held_out = build_face_model(config, progress)
        model.save(tmp)
        if config.report_held_out > 0:
            from synth.build.report import write_report

            write_report(model, held_out, tmp)
        _make_readable(tmp)
        try:
            os.replace(tmp, target)  # atomic; replaces an empty directory
        except OSError:
            if _is_built(target, config):  # a concurrent build of the same recipe won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("face model %s written (model_id %s)", target, model.model_id)
    return target


PINNED_CHILD = "SYNTH_PINNED_BUILD"  # set in the environment of the process `_build_in_pinned_process` starts


def _build_in_pinned_process(config: ModelConfig, target: Path, progress: bool) -> Path:
    """Build in a child process started with synth's CPU pins (`synth.cpu`): a model's bytes, and so its
    id, must not depend on the CPU or on what the calling process imported first. The recipe travels as
    its `build_spec` JSON on stdin; the child answers one JSON line ({"path"} or {"error"}) on stdout,
    its progress bars and log on this process's stderr."""
    log.info("building in a child process on synth's pinned CPU code path (this one is not, see synth.cpu)")
    env = {**os.environ, **cpu.pinned_env(), PINNED_CHILD: "1"}
    child = subprocess.run(
        [sys.executable, "-m", "synth.build.child", str(target), "1" if progress else "0"],
        input=json.dumps(build_spec(config)),
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        check=False,
    )
    lines = child.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if "error" in answer:
        raise SynthError(answer["error"])
    if child.returncode != 0 or "path" not in answer:
        raise RuntimeError(
            f"the model build's child process failed (exit {child.returncode}); see its log above"
        )
    return Path(answer["path"])


def _building_stem(target: Path) -> str:
    """`.NAME.building-HOST-`: how the temporary directories of builds of `target` on this host begin."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    return f".{target.name}.building-{host}-"


def _building_prefix(target: Path, pid: int) -> str:
    """Name prefix of the temporary directory a build of `target` writes into: host and pid, so that a
    later build can tell a killed build's leftovers from a running one's."""
    return f"{_building_stem(target)}{pid}-"


def remove_stale_builds(target: Path) -> list[Path]:
    """Delete the temporary directories of builds of `target` killed on this host (their process is
    gone); builds running here or on other hosts sharing the cache are left alone. Returns what went."""
    prefix = _building_stem(target)
    removed = []
    for path in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by a killed build", path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def build_face_model(config: ModelConfig, progress: bool = True) -> tuple[FaceModel, FaceTensor | None]:
    """The recipe: (1) tensor from the source, then `model_from_tensor` (2-4), then (5) for Anny sources the
    identity conditional. Returns the model with the held-out identities for the report (None when there
    are none)."""
    start = time.perf_counter()
    # 1. the identity x expression tensor (3 x n_identities with mirrored and symmetrised variants)
    tensor = source_tensor(config, progress)
    tensor_s = time.perf_counter() - start
    model = model_from_tensor(tensor, config, progress)
    model.info["timings_s"] = {"tensor": tensor_s, **model.info["timings_s"]}
    anny = config.source in (ModelSource.anny, ModelSource.anny_transfer)
    if anny and config.conditioning_identities > 0:
        # 5. the identity distribution given age and sex, from fresh identities of the same source
        from synth.sources.conditioning import fit_identity_conditional

        t = time.perf_counter()
        seed = int(seed_sequence(config.seed, 2, Stage.BUILD).generate_state(1)[0])
        model.identity_conditional = fit_identity_conditional(
            model, config.anny, config.conditioning_identities, seed
        )
        model.info["timings_s"]["conditional"] = time.perf_counter() - t
    held_out = None
    if config.report_held_out > 0 and anny:
        held_out = held_out_tensor(config, progress)
    return model, held_out


def model_from_tensor(tensor: FaceTensor, config: ModelConfig, progress: bool = False) -> FaceModel:
    """(2) HOSVD with per-mode truncation, (3) one RealNVP per factor, (4) the `FaceModel`."""
    log.info(
        "tensor: %d identities x %d expressions x %d vertices",
        tensor.n_identities, tensor.n_expressions, tensor.n_vertices,
    )  # fmt: skip
    # 2. HOSVD of T (eq. 8-9), truncated per mode by explained variance
    t = time.perf_counter()
    h = bilinear.hosvd(tensor, config.variance_id, config.variance_ex)
    hosvd_s = time.perf_counter() - t
    log.info("HOSVD keeps %s", h.kept())

    # 3. flows on the training coefficients (eq. 10-19), each from its own seeded stream
    t = time.perf_counter()
    gen_id, gen_ex = (torch_generator(config.seed, 0, Stage.BUILD, k) for k in (1, 2))
    groups_id, groups_ex = _groups(tensor.identity_ids), _groups(tensor.expression_names)
    flow_id, hist_id = train_flow(h.w_id, config.flow, gen_id, progress, "identity flow", groups_id)
    flow_ex, hist_ex = train_flow(h.w_ex, config.flow, gen_ex, progress, "expression flow", groups_ex)
    flows_s = time.perf_counter() - t

    # 4. the model
    return FaceModel(
        core=h.core,
        mean=h.mean,
        faces=torch.as_tensor(tensor.faces, dtype=torch.int64),
        identity_coefficients=h.w_id,
        expression_coefficients=h.w_ex,
        expression_aus=torch.as_tensor(tensor.expression_aus, dtype=torch.float32),
        energy_id=torch.from_numpy(h.energy_id),
        energy_ex=torch.from_numpy(h.energy_ex),
        flow_id=flow_id,
        flow_ex=flow_ex,
        expression_names=tensor.expression_names,
        au_names=tensor.au_names,
        identity_ids=tensor.identity_ids,
        info={
            "build": build_spec(config),
            "build_key": config.build_key(),
            "source": json.loads(json.dumps(tensor.source, default=str)),
            "hosvd": h.kept(),
            "flows": {"id": hist_id, "ex": hist_ex},
            "timings_s": {"hosvd": hosvd_s, "flows": flows_s},
        },
    )


def source_tensor(config: ModelConfig, progress: bool) -> FaceTensor:
    """The training tensor of `config`'s source."""
    if config.source is ModelSource.tensor:
        from synth.sources.tensor_file import load_tensor_npz

        tensor = load_tensor_npz(Path(config.tensor_path).expanduser())
        return select_expressions(tensor, config.expressions, "model.expressions")
    if config.source is ModelSource.anny_transfer:
        from synth.sources.transfer import build_transfer_tensor

        prior = _anny_prior(config, config.n_identities)
        return build_transfer_tensor(prior, config.transfer, config.seed, progress)
    from synth.sources.anny_source import build_anny_tensor

    return build_anny_tensor(_anny_prior(config, config.n_identities), config.seed, progress)


def held_out_tensor(config: ModelConfig, progress: bool) -> FaceTensor:
    """`report_held_out` base identities from the same prior with fresh seeds (not in the build), made by
    the build's own source (Anny's expressions, or expressions transferred from adults); without
    mirrored / symmetrised variants, which would not be independent of their base identity."""
    seed = int(seed_sequence(config.seed, 1, Stage.BUILD).generate_state(1)[0])
    source = dataclasses.replace(_anny_prior(config, config.report_held_out), variants=False)
    if config.source is ModelSource.anny_transfer:
        from synth.sources.transfer import build_transfer_tensor

        return build_transfer_tensor(source, config.transfer, seed, progress)
    from synth.sources.anny_source import build_anny_tensor

    return build_anny_tensor(source, seed, progress)


def report_for_directory(model_dir: Path, held_out: int | None, out: Path | None) -> dict[str, Any]:
    """`synth model-report`: load the model, draw `held_out` fresh identities from its recorded Anny prior
    through its own source (default count: its build setting; none for tensor-file models) and write the
    report to `out` or the model."""
    from synth.build.report import write_report

    model = FaceModel.load(model_dir)
    config = config_from_spec(model.info["build"])
    n = config.report_held_out if held_out is None else held_out
    tensor = None
    if n > 0 and config.source in (ModelSource.anny, ModelSource.anny_transfer):
        config.report_held_out = n
        tensor = held_out_tensor(config, progress=True)
    return write_report(model, tensor, out or model_dir)


def _anny_prior(config: ModelConfig, n_identities: int) -> "AnnySourceConfig":
    """What the Anny source builds: `n_identities` from the prior, with variants, the model's expressions
    at its intensity."""
    from synth.sources.anny_source import AnnySourceConfig

    return AnnySourceConfig(
        n_identities=n_identities,
        ages=config.training_ages,
        expressions=list(config.expressions) or None,
        delta=config.intensity,
        variants=True,
        prior=config.anny,
    )


def select_expressions(tensor: FaceTensor, names: list[str], key: str) -> FaceTensor:
    """The tensor restricted to `names` (in catalogue order, "neutral" always kept); all when empty."""
    if not names:
        return tensor
    unknown = sorted(set(names) - set(tensor.expression_names))
    if unknown:
        raise SynthError(f"{key}: unknown expressions {unknown}; known: {', '.join(tensor.expression_names)}")
    keep = [i for i, n in enumerate(tensor.expression_names) if n in names or n == "neutral"]
    return tensor.select_expressions(
        keep, source={**tensor.source, "expressions": [tensor.expression_names[i] for i in keep]}
    )


def _groups(names: list[str]) -> list[int]:
    """Group ids of identities / expressions that must not be split between flow training and validation:
    an identity with its "-mirror" / "-sym" variants, an expression with its "_left" / "_right" twin."""
    keys = [re.sub(r"(-mirror|-sym|_left|_right)$", "", name) for name in names]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return [index[key] for key in keys]


def _make_readable(directory: Path) -> None:
    """Temporary files and directories are created private (0600 / 0700); a model is for everyone the
    umask allows, like any other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _stale_triangulation(path: Path, config: ModelConfig) -> bool:
    """Whether a built Anny model has Anny's own, CPU-dependent triangles instead of synth's shipped ones
    (`anny_source.head_faces`; models cached before synth shipped them)."""
    if config.source is ModelSource.tensor:
        return False
    from synth.sources.anny_source import shipped_head_faces

    faces = shipped_head_faces()
    expected = triangles_hash(faces, int(faces.max()) + 1)
    return json.loads((path / "model.json").read_text()).get("topology_hash") != expected


def _is_built(path: Path, config: ModelConfig) -> bool:
    """Whether `path` holds a complete model built from `config`'s recipe."""
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("info", {}).get("build_key") == config.build_key()
