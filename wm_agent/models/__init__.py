"""The three networks of a world model: V (the VQ-VAE), M (the MDN-RNN) and C (the controller).

They know tensors and the config only (and each other: M and C read cells through V's codebook)."""
