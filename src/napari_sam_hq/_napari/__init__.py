"""napari + Qt layer of the plugin: the widget, layer adapters and sample data."""

from ..engine.threads import spin_openmp_workers

# The widget runs the model in worker threads; OpenMP must know that before torch loads
# (engine/threads.py: up to 2x on every parallel operator otherwise).
spin_openmp_workers()
