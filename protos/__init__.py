"""The gRPC contract of atelier (package ``atelier.v1``) and its generated stubs.

The ``.proto`` sources live beside the stubs; ``make protos`` regenerates them.
"""
