"""The control plane's gRPC side: everything that turns a call into a domain function and back.

- `main`: `python -m control_plane serve|migrate`.
- `server`: builds and runs the gRPC server (services, health, reflection, metrics, sweeps).
- `servicers/`: one module per area of `atelier.v1.ControlPlane`, and `atelier.v1.TrainingData`.
- `auth`: the bearer key, its scope and the `Caller` each RPC is handed; `bearer` parses the header.
- `interceptor`: request ids, domain errors mapped to status codes with rich details.
- `convert`: protobuf messages to and from domain types; `page_tokens`: opaque list cursors.
"""
