"""The `atelier` command line and the local launcher; no serving or domain logic lives here."""
