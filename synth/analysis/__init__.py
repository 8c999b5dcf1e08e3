"""synth.analysis: experiments on built face models, each a function returning a JSON-able result that
`synth fit` / `synth analyze` / `synth au evaluate` / `synth anthropometry` write. Reconstruction and
neutralisation of held-out infants, fitting from 2D keypoints (synthetic and from generated datasets), the
latent analyses of BabyFlow 4.5 (parallel analysis, Mahalanobis-projected sampling, nearest neighbours,
diversity / specificity) (`analysis`), the evaluation of the two AU labelling methods on held-out infants
(`au_evaluation`), and the config of `synth anthropometry` (`anthropometry_config`; the measurements
themselves are labels: `synth.labels.anthropometry`). The top of the model stack: it may use fitting,
build, sources, labels and the model; nothing below imports it.
"""
