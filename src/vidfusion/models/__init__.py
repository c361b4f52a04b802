"""Networks: the 3D causal VAE, the expert-adaLN diffusion transformer and text encoders."""
