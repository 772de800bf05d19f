"""The pieces every technique is built from: weight transforms, layer selection, parameter
constraints and the technique interface (see docs/architecture.md)."""
