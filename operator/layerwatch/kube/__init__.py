"""The Kubernetes shell: kopf handlers, reading OCIRepositories and ProxyChains, writing back.

Pure translation lives in ``targets`` (objects to watches) and ``conditions`` (results to
conditions and events); ``api`` talks to the apiserver; ``service`` wires them to the scheduler;
``handlers`` registers with kopf; ``main`` is ``layerwatch operator``.
"""
