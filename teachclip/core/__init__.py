"""The bottom layer, imported by everything else and importing nothing of teachclip above it:
configuration (:mod:`.config`), errors (:mod:`.errors`), manifests and splits (:mod:`.manifest`),
fingerprints (:mod:`.fingerprint`), atomic files (:mod:`.files`), dask (:mod:`.parallel`), the progress
bar (:mod:`.progress`) and devices (:mod:`.device`, the only part that touches torch)."""
