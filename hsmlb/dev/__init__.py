"""Dev tooling that ships with the daemon but is not the daemon: the embedded SoftHSM2 cluster."""
