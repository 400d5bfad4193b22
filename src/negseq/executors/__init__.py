"""Executors: the same `SamplingPlan` on a pool of threads (`local`) or a Ray Data actor pool (`ray_data`)."""
