"""The Neoleads API resources: per resource, its SandboxState mixin and its router factory."""
