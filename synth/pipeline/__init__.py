"""synth.pipeline."""
