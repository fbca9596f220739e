"""The package version, kept in one place so `zlayer --version` never imports anything else."""

__version__ = "0.1.0"
