"""Test-wide settings. Under CI (CI=true) hypothesis draws the same examples every run, so a
red build is reproducible; locally it explores new ones each time."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
