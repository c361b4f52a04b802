"""End-to-end generation: prompt (and image or video) in, frames out."""
