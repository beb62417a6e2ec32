"""The fuzz tier: seeded hostile inputs (models, calibration files, pipelines, options,
recipes, artifacts) driven through the ``greencc`` command line (issue 13)."""
