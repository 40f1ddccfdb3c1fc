"""Fenxiao: a streaming commission engine for distribution (分销) programs."""
