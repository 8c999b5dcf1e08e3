"""synth.sources: where the identity x expression training tensors (`synth.facemodel.tensor.FaceTensor`)
come from. The Anny infant prior and its expressions (`anny_source`), calibrated to infant growth norms
(`anny_calibration`, `anny_anthropometry`, `conditioning`), a user's own tensor file (`tensor_file`, see
docs/bring-your-own-model.md), expressions transferred from remeshed adult heads (`transfer`,
`transfer_config`) and the cross-topology correspondence it uses (`correspondence`). Sources use the
model's tensor type and the labels (expression catalogue, landmarks); they know nothing of how a model is
built from their tensors (`synth.build`).
"""
