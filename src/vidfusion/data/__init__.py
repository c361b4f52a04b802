"""Training data: the procedural captioned world (`world`: scenes, rendering, deterministic train/val/heldout
splits) and its caption grammar (`captions`: templated captions and a parser that reads any prompt back into
attributes)."""
