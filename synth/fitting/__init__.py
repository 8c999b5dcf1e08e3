"""synth.fitting: a built face model fitted to data. Fitting to 3D meshes and 2D keypoints under the flow,
Gaussian or no prior, and neutralisation (`fitting`), the PCA shape model baseline (`baseline`), LiP-Flow's
keypoint encoder (`keypoint_encoder`), the shape metrics fits are scored with (`metrics`: per-vertex error
in mm and its summaries, diversity, specificity) and `synth fit`'s configuration (`config`). It uses the
model, its labels and its build; the experiments that compare fits live above it in `synth.analysis`.
"""
