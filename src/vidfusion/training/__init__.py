"""Trainers for the two learned models, sharing one set of conventions.

    vidfusion train vae --config configs/vae_tiny.toml [key=value ...]
    vidfusion train dit --config configs/dit_tiny.toml vae_path=runs/vae_tiny/export/vae [key=value ...]

- `config`: TOML + `key=value` overrides into `VAETrainConfig` / `DiTTrainConfig`.
- `checkpointing`: atomic, safetensors-only checkpoints (weights, EMA, optimizer, RNG) and automatic resume.
- `common`: EMA, LR schedule, data loader over the procedural world, logging, progress, wall-clock budget.
- `losses`: VAE reconstruction terms, the 3D patch discriminator, hinge loss and the adaptive GAN weight.
- `train_vae`, `train_dit`: one `train(config)` each, written out top to bottom.

Runs are deterministic functions of (config, seed): data order, noise, timesteps and text dropout are drawn from
generators seeded by (seed, step), so resuming needs no loader or RNG state and gives the same model as an
uninterrupted run (bit for bit on CPU).
"""
