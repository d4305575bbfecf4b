"""An example sparse-nas plug-in: the ``residual_mlp`` search space (:mod:`nas_plugin_example.spaces`)."""
