"""synth.diffusion."""
