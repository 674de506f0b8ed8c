"""Settings every test process needs before TensorFlow is first imported."""

import os

# TensorFlow's C++ info and warning lines would bury pytest's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Session fixtures (tiny exported models) shared by the bad-input and property-based tests.
pytest_plugins = ["tests.fixtures_bad_input"]
