"""``nn.Module``s that own each method's parameters (with the papers' init) and call the functional ops."""
