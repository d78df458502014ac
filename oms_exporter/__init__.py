"""Prometheus exporter for Huawei Cloud OMS migration tasks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oms-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
