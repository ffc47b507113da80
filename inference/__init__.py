"""Atelier's inference side: models, backends and the Ray Serve deployments that run them.

Import `inference.app` for the Serve application; this package imports nothing heavy itself.
"""
