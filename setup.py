"""Build of the optional C speedups; everything else about the package is in pyproject.toml.

`oms_exporter/_speedups.c` makes a scrape of many changed tasks cheaper. Where it cannot be
built (no C compiler), the install goes on and the exporter runs the same functions in
Python, at more CPU per scrape; its "listening" log line says which (speedups=c or python).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("oms_exporter._speedups", ["oms_exporter/_speedups.c"], optional=True)])
