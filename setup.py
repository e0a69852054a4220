"""grammar/, kernels/ and specs/ sit at the top of the repository but ship as archdsl.grammar, archdsl.kernels and
archdsl.specs (the published specs, which a bare name loads: `archdsl show mamba2-2.7b`)."""
from setuptools import find_packages, setup

packages = find_packages(include=["archdsl", "archdsl.*"])
packages += ["archdsl.kernels"] + [f"archdsl.kernels.{p}" for p in find_packages("kernels")]
packages += ["archdsl.grammar", "archdsl.specs"]

setup(packages=packages,
      package_dir={"archdsl.kernels": "kernels", "archdsl.grammar": "grammar", "archdsl.specs": "specs"})
