"""One module per loader engine; each builds itself from the AugmentPolicy.

An engine never imports another engine: what they share lives in pipeline/policy.py and
pipeline/params.py. Optional dependencies (DALI, FFCV) are imported only inside their engine."""
