"""The ``glm-engine`` command line."""
