"""Runnable demonstrations behind ``fedstore demo``."""
