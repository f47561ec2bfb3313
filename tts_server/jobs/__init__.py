"""Generation jobs: the in-flight registry, the inference queue, one job's run through the engine, its timeline."""
