"""A real-registry test lab: distribution registries, Harbor-like gateways and oras pushes on loopback.

``lab.chain.LocalChain`` is the entry point; ``lab.gateway`` is the Harbor stand-in with fault
injection; ``lab.artifacts`` pushes Flux-format artifacts with the real ``oras`` CLI.
"""
