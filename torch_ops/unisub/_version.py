"""The package version, in a module of its own: pyproject.toml reads it without importing the
package, and the ``unisub --version`` command without loading torch."""
__version__ = "0.1.0"
