"""Adapter layers: pure ``nn.Module``s holding the math of each method, no I/O."""
