"""`synth fit [task=files|reconstruction|keypoints] [inputs=[a.ply,...]] [out=DIR] [model=...] [fit.*=...]`.

task=files: fit each mesh file (model topology) and write its latents, reconstruction, per-vertex errors
and (neutralise=true) its neutralised mesh into `out`, with `fit.json`.
task=reconstruction: held-out infants of the model's own prior, BabyFlow vs Gaussian prior vs the PCA
baseline, per region, and neutralisation: `reconstruction.json` + `reconstruction.md`.
task=keypoints: held-out samples fitted from their 2D landmarks under each prior: `keypoints.json` + `.md`;
with data=DIR the samples of that dataset, with keypoint_encoder=DIR also the LiP-Flow encoder's fits.
task=train_keypoint_encoder data=DIR out=DIR [encoder.epochs=...]: train LiP-Flow's keypoint encoder on a
dataset of the model: `keypoint_encoder.safetensors` + `keypoint_encoder.json` in `out`.
"""

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synth.cli._hydra import run
from synth.fitting.config import FitConfig, FitTask

log = logging.getLogger(__name__)


def _task(config: FitConfig, raw: DictConfig) -> int:
    import numpy as np
    import torch

    from synth.analysis import analysis
    from synth.atomic import atomic_write_text
    from synth.build.build import resolve_model
    from synth.facemodel.model import FaceModel
    from synth.fitting import fitting

    out = Path(config.out)
    start = time.perf_counter()
    model = FaceModel.load(resolve_model(config.model, progress=True), config.device)
    record = {"config": OmegaConf.to_container(raw, resolve=True), "model_id": model.model_id}
    if config.task is FitTask.files:
        targets = np.stack([fitting.read_mesh_file(p, model.n_vertices) for p in config.inputs])
        fm = fitting.fit_model_from_face_model(model)
        faces = model.faces.cpu().numpy()
        summary = {}
        for lo in range(0, len(targets), config.batch_size):
            batch = torch.from_numpy(targets[lo : lo + config.batch_size]).to(config.device)
            fit = fitting.fit_meshes(fm, batch, config.fit)
            neutral = None
            if config.neutralise:
                with torch.no_grad():
                    neutral = fit.transform.apply(fitting.neutral_twin(fm, fit.w_id)).cpu().numpy()
            for row in range(batch.shape[0]):
                path = Path(config.inputs[lo + row])
                summary[str(path)] = fitting.write_fit(
                    out, path.stem, path.suffix.lower(), fit, row, faces, targets[lo + row],
                    None if neutral is None else neutral[row],
                )  # fmt: skip
            log.info("fitted %d / %d meshes", min(lo + config.batch_size, len(targets)), len(targets))
        record["errors_mm"] = summary
        name = "fit"
    elif config.task is FitTask.reconstruction:
        from synth.build.build import held_out_tensor
        from synth.build.config import ModelSource, config_from_spec
        from synth.errors import SynthError
        from synth.labels.landmarks import load_anny_head_landmarks
        from synth.labels.regions import face_regions

        recipe = config_from_spec(model.info["build"])
        if recipe.source is not ModelSource.anny:
            raise SynthError("task=reconstruction draws held-out infants from the model's Anny prior; "
                             f"this model was built from source={recipe.source.value}")  # fmt: skip
        recipe.report_held_out = config.held_out or recipe.report_held_out
        held_out = analysis.subset_expressions(
            held_out_tensor(recipe, progress=True), config.expressions_per_identity,
            np.random.default_rng(config.seed),
        )  # fmt: skip
        regions = face_regions(model.mean_shape.cpu().numpy(), load_anny_head_landmarks())
        record["result"] = analysis.reconstruction_experiment(
            model, held_out, config.fit, regions, config.baseline_meshes, config.baseline_variance,
            config.seed, config.batch_size,
        )  # fmt: skip
        record["regions_vertices"] = {k: int(v.sum()) for k, v in regions.items()}
        name = "reconstruction"
        atomic_write_text(out / f"{name}.md", analysis.reconstruction_markdown(record["result"]))
    elif config.task is FitTask.train_keypoint_encoder:
        from synth.fitting import keypoint_encoder as ke

        data = ke.read_keypoint_data(config.data)
        fm = fitting.fit_model_from_face_model(model)
        trained = ke.train_keypoint_encoder(data, model.model_id, config.encoder, fm)
        ke.save_keypoint_encoder(out, trained, config.encoder)
        record["result"] = {"samples": trained.samples, "final_train_loss": trained.train_loss[-1],
                            "final_val_loss": trained.val_loss[-1],
                            "val_loss_mean_latent": trained.val_loss_mean_latent,
                            "best_epoch": trained.best_epoch}  # fmt: skip
        name = "train_keypoint_encoder"
    elif config.data is not None:
        from synth.fitting import keypoint_encoder as ke

        encoder = None
        if config.keypoint_encoder:
            encoder = ke.load_keypoint_encoder(config.keypoint_encoder, model.model_id)
        data = ke.read_keypoint_data(config.data, limit=config.keypoint_samples, mesh=True)
        record["result"] = analysis.dataset_keypoint_experiment(
            model, data, encoder, config.fit, config.batch_size
        )
        name = "keypoints"
        atomic_write_text(out / f"{name}.md", analysis.keypoint_markdown(record["result"]))
    else:
        if config.keypoint_encoder:
            from synth.errors import SynthError

            raise SynthError("keypoint_encoder: the encoder is evaluated on dataset samples; add data=DIR "
                             "(a held-out dataset made by synth generate)")  # fmt: skip
        record["result"] = analysis.keypoint_experiment(
            model, config.keypoint_samples, config.seed, config.fit, config.batch_size
        )
        name = "keypoints"
        atomic_write_text(out / f"{name}.md", analysis.keypoint_markdown(record["result"]))
    record["seconds"] = time.perf_counter() - start
    atomic_write_text(out / f"{name}.json", json.dumps(record, indent=1, default=str) + "\n")
    sys.stdout.write(f"{out / name}.json\n")
    return 0


def main() -> int:
    return run("fit", _task)
