"""Arrow Flight sampler server and client."""
