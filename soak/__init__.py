"""The soak (issue 19): a random workload against the real parts while svirtd and libvirtd are SIGKILLed,
with the invariants checked from the outside after every restart. `make soak`; a short run is in `make test`."""
