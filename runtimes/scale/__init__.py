"""The speech server on a Ray Serve cluster (`valle-export serve MODEL --ray`, or `serve run
runtimes.scale.app:build model=...`): the one-machine FastAPI app as the ingress deployment, engine replicas
that each hold the batched engine loop, and one voice registry.

Ray is an optional extra (`valle-export[ray]`): no module here imports it at module level, so the torch-free
core and the one-machine server never load it.
"""
