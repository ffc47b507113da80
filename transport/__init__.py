"""What every side of atelier shares to talk gRPC: TLS settings for servers and channels, and
the call metadata naming the caller and the end user it acts for.

`control_plane`, `inference` and the `atelier` CLI all import this package; it imports none
of them, so neither side depends on another through it.
"""

from transport.call_metadata import ACTING_ACCOUNT, USER_TOKEN, CallerCredentials
from transport.tls import TlsConfig, TlsConfigError

__all__ = ["ACTING_ACCOUNT", "USER_TOKEN", "CallerCredentials", "TlsConfig", "TlsConfigError"]
