"""Offline tests of the Helm chart in deploy/helm/atelier: one module per template, as specifications."""
