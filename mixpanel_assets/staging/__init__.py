"""Staging: a run's source stream -> deduplicated rows per window on local disk -> finished part
files. Every pass over the input happens here; destinations only upload or load what staging made."""
