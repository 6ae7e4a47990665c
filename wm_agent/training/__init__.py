"""Training: the fit loops of V and M, and the controller's search algorithms (CMA-ES, policy gradient)."""
