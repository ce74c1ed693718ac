"""fishbench serving: a FastAPI service around the optimized engine (see serving.app)."""
