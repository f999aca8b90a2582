"""The parts of `smoothgen.generative` (smoothed generation from a causal LM), one seam each: the model
interface, the substitution threat model, the noise spaces, the certificates and the prompt smoother they
share with `smoothgen.encoders`. `smoothgen.generative` holds `SmoothedLM` and re-exports their public names."""
