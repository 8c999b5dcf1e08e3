"""synth.labels: what a face mesh is labelled with, and the data those labels are defined by. The
expression catalogue and its AU table (`expressions`, `data/expressions.json`), AU intensities of a mesh by
NNLS on AU bases (`au_labels`), the spectral SVM AU detector (`au_detector`), the 23 anatomical landmarks
as vertices of the Anny head topology (`landmarks`, `data/landmarks_anny_head.json`), the face regions
built from them (`regions`), and the expression prior that draws AU vectors like real faces make
(`expression_prior`, `data/expression_prior.json`). Labels depend only on meshes and topologies: this
package may import `synth.facemodel`, never the sources, the build, fitting, analysis or the pipeline.
"""
