"""synth.records."""
