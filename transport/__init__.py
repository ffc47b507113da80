"""What every side of atelier shares to talk gRPC: TLS settings for servers and channels.

`control_plane`, `inference` and the `atelier` CLI all import this package; it imports none
of them, so neither side depends on another through it.
"""

from transport.tls import TlsConfig, TlsConfigError

__all__ = ["TlsConfig", "TlsConfigError"]
