"""TLS and mTLS, caller identity, authorization policy and per-caller rate limits.

The filter (hsmlb.auth.filter), TLS material (hsmlb.auth.tls) and the dev CA (hsmlb.auth.devca) are
imported from their modules: importing the config models must not pull in grpc."""

from hsmlb.auth.config import AuthConfig, CallerRule, RateLimit, TlsConfig
from hsmlb.auth.policy import Grant, Policy
from hsmlb.auth.ratelimit import TokenBucket

__all__ = ["AuthConfig", "CallerRule", "Grant", "Policy", "RateLimit", "TlsConfig", "TokenBucket"]
