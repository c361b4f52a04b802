"""Data curation: raw videos -> scored, filtered, bucketed training clips (`vidfusion curate`; docs/curation.md).

Stages, each reading the previous stage's Parquet table: probe -> shots -> clips -> motion -> quality -> captions,
then filters -> manifest.parquet and a report. `runner.curate` runs them (resumable; local processes or Ray),
`runner.read_manifest` and `dataset.ManifestClips` read the result.
"""
