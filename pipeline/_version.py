"""sensorlab's version: one constant, imported by the package root, manifests and exports
(a leaf module, so that nothing low in the layers imports the package root)."""

__version__ = "0.1.0"
