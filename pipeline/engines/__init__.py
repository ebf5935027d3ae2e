"""One module per loader engine; each builds itself from the AugmentPolicy.

An engine never imports another engine: what they share lives in pipeline/policy.py and
pipeline/transforms/ (each transform's sampler, torch op and DALI expression). Optional dependencies (DALI, FFCV)
are imported only inside their engine."""
