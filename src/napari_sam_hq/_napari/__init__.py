"""napari + Qt layer of the plugin: the widget, layer adapters and sample data."""
