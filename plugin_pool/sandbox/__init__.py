"""The sandbox for Untrusted plugins: confinement, the zygote and the worker side (no host imports here)."""
