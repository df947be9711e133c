"""Backends that ship with strongroom, each an ordinary pluggy plugin module."""
