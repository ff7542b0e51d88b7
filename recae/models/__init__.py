"""The networks: autoencoders, their losses and batches, rankers (EASE), Mult-VAE and RBMs."""
