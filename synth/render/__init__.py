"""synth.render."""
