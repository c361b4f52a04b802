"""VidFusion: latent video diffusion from raw footage to finished video."""

__version__ = "0.1.0"
