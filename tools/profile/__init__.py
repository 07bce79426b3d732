"""Profiles and diagnoses (where time or memory goes): `python -m tools.profile.NAME --help`."""
