"""Building blocks: encoders, decoders, the posterior head and critics."""
