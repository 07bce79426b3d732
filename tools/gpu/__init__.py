"""Checks for a lent GPU machine, all run by `bash tools/gpu/suite.sh OUT_DIR DATA_DIR`."""
