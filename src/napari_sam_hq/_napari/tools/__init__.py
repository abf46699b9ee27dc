"""The dock's tools, one small ``QGroupBox`` each, built and laid out by the dock: propagation
through a stack, segment everything, adaptation, refinement and measurement. Each receives a
``ToolHost`` (``_napari/host.py``), the only thing of the dock it may use; each runs the
engine's generators in a worker and changes layers only in the worker's handlers. A new tool
is a new file here and one line in the dock's ``_build_tools``."""
