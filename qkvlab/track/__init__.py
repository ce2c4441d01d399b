from qkvlab.files import write_json_atomic
from qkvlab.track.metrics import MetricsWriter

__all__ = ["MetricsWriter", "write_json_atomic"]
