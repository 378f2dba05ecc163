"""Node health beside the request path: operator drills, active checks, outlier ejection."""

from hsmlb.health.state import HealthPolicy, NodeHealth

__all__ = ["HealthPolicy", "NodeHealth"]
