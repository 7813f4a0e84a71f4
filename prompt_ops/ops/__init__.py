"""Autograd-wrapped ops: ``torch.library`` custom ops, fake implementations, backend dispatch, public entries."""
