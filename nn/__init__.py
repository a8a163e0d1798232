"""nn: modules, layers, losses and optimizers built on microtensor's public API."""
