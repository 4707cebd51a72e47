"""Filesystem backend."""
