"""Users' own trained networks: ONNX files checked, converted to torch and summarised for the catalog."""
