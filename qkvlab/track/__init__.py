from qkvlab.track.metrics import MetricsWriter, write_json_atomic

__all__ = ["MetricsWriter", "write_json_atomic"]
