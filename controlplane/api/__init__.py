"""The gRPC surface of the control plane: thin servicers and their proto converters."""
