"""synth.facemodel."""
