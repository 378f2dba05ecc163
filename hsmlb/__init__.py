"""hsmlb: a gRPC load balancer in front of PKCS#11 HSM clusters and cloud payment-crypto regions."""

__version__ = "0.1.0"
