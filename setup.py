"""grammar/ and kernels/ sit at the top of the repository but ship as archdsl.grammar and archdsl.kernels."""
from setuptools import find_packages, setup

packages = find_packages(include=["archdsl", "archdsl.*"])
packages += ["archdsl.kernels"] + [f"archdsl.kernels.{p}" for p in find_packages("kernels")]
packages += ["archdsl.grammar"]

setup(packages=packages, package_dir={"archdsl.kernels": "kernels", "archdsl.grammar": "grammar"})
